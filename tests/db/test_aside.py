"""The swap of a restore's aside schema: only the checked one of that restore, the
pair's lease kept (esc.db.aside)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from esc.db.aside import ASIDE_SCHEMA, KEPT_SCHEMA, AsideError, mark_checked, new_token, swap_in

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres) -> Iterator[str]:
    name = f"esc_{uuid.uuid4().hex[:12]}"
    made = postgres.create_database(name)
    yield made
    postgres.drop_database(name)


def _lease_table(connection, schema: str, epoch: int, handover: str | None) -> None:
    connection.exec_driver_sql(
        f"CREATE TABLE {schema}.active_lease (name varchar(16) PRIMARY KEY, epoch int, "
        "node varchar(128), address varchar(256), renewed_at timestamptz, "
        "handover_to varchar(128))"
    )
    connection.execute(
        text(
            f"INSERT INTO {schema}.active_lease VALUES ('active', :e, 'n1', 'http://a', now(), :h)"
        ),
        {"e": epoch, "h": handover},
    )


def _swap(engine, token: str) -> None:
    with engine.begin() as connection:
        swap_in(connection, token, keep_lease=True)


def test_only_the_checked_aside_of_that_restore_is_swapped_in_and_the_lease_stays(url) -> None:
    engine = create_engine(url)
    token = new_token()
    try:
        with engine.begin() as connection:
            _lease_table(connection, "public", epoch=7, handover=None)
            connection.exec_driver_sql(f"CREATE SCHEMA {ASIDE_SCHEMA}")
            # The backup's lease: an older epoch and a handover it recorded.
            _lease_table(connection, ASIDE_SCHEMA, epoch=3, handover="198.18.0.12")

        with pytest.raises(AsideError, match="not the one this restore built and checked"):
            _swap(engine, token)  # not marked: not checked yet
        with engine.begin() as connection:
            mark_checked(connection, new_token())  # another restore's
        with pytest.raises(AsideError, match="not the one this restore built"):
            _swap(engine, token)
        with pytest.raises(AsideError, match="is not a restore's token"):
            _swap(engine, "x'; DROP SCHEMA public; --")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT epoch FROM active_lease").scalar() == 7

        with engine.begin() as connection:
            mark_checked(connection, token)
        _swap(engine, token)
        with engine.connect() as connection:
            row = connection.exec_driver_sql(
                "SELECT epoch, handover_to FROM public.active_lease"
            ).one()
            assert tuple(row) == (7, None)
            schemas = set(connection.exec_driver_sql("SELECT nspname FROM pg_namespace").scalars())
            assert KEPT_SCHEMA in schemas and ASIDE_SCHEMA not in schemas
        with pytest.raises(AsideError, match=f"no schema {ASIDE_SCHEMA}"):
            _swap(engine, token)  # swapped in once only
    finally:
        engine.dispose()
