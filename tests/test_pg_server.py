"""The tests' PostgreSQL 15 server is real and usable."""

from __future__ import annotations

import sqlalchemy
from pg_server import PostgresServer


def test_real_postgresql_15(postgres: PostgresServer) -> None:
    url = postgres.create_database("probe")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.execute(sqlalchemy.text("select version()")).scalar_one()
        assert version.startswith("PostgreSQL 15")
    finally:
        engine.dispose()
        postgres.drop_database("probe")
