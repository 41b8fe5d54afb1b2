"""Alembic environment bound to the models' metadata."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from esc.db import schema_compat
from esc.db.models import Base, UTCDateTime

target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations hold plain SQLAlchemy types, never imports of the models,
    # so an old migration keeps working whatever the models become.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
        compare_type=True,
        include_object=schema_compat.include_object,
    )


def _migrate(connection: Any) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
        # In the same transaction: the schema and its compatible-from record change together.
        revision = context.get_context().get_current_revision()
        schema_compat.record(connection, context.script, revision)


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        _migrate(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run them against a DB")
run_migrations_online()
