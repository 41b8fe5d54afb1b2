"""Which tables a backup holds, in which order, and how their values are written.

Parents before children (the models' foreign-key order), so a restore can
insert table by table; and the kinds of column whose values an archive
writes in a backend-neutral form (copytext.py).

A backup may be written as of an older revision of this release's migration
history (`tables_at`): only the tables and columns that revision has, as
its migrations make them. That is what a database behind this release's head
holds (a new release's standby replicating an older primary), and what the
restore of an older release, which knows no later revision, loads.
"""

from __future__ import annotations

import enum
import functools
from datetime import UTC, datetime

from alembic.config import Config
from sqlalchemy import JSON, Boolean, DateTime, MetaData, Table, create_engine

from esc.db import schema_compat
from esc.db.migrate import head_revision, upgrade
from esc.db.models import Base, UTCDateTime

# The schema's own bookkeeping, never rows of an archive: a restore writes both afresh.
BOOKKEEPING = frozenset({"alembic_version", schema_compat.TABLE})


class Kind(enum.Enum):
    PLAIN = "plain"
    DATETIME = "datetime"
    JSON = "json"
    BOOL = "bool"


def backed_up_tables() -> list[Table]:
    """Every table of the current models, parents first."""
    return list(Base.metadata.sorted_tables)


def tables_at(revision: str) -> list[Table]:
    """The tables of a backup as of `revision` of this release's migrations, parents
    first: at the head, the models' own; else as the migrations up to it make them."""
    if revision == head_revision():
        return backed_up_tables()
    return migrated_tables(revision)


@functools.cache  # the migrations are files of this installed release: they do not change
def migrated_tables(revision: str, location: str | None = None) -> list[Table]:
    """The tables the migrations up to `revision` make (those of script_location
    `location`, else this release's), reflected from a scratch in-memory SQLite."""
    config = None
    if location is not None:
        config = Config()
        config.set_main_option("script_location", location)
    engine = create_engine("sqlite://")
    metadata = MetaData()
    try:
        with engine.begin() as connection:
            upgrade(connection, revision, config)
            metadata.reflect(connection)
    finally:
        engine.dispose()
    return [t for t in metadata.sorted_tables if t.name not in BOOKKEEPING]


def column_kinds(table: Table) -> dict[str, Kind]:
    """Per column, how it is written; for the models' tables and for reflected ones alike."""
    kinds = {}
    for column in table.columns:
        if isinstance(column.type, UTCDateTime | DateTime):
            kinds[column.name] = Kind.DATETIME
        elif isinstance(column.type, JSON):
            kinds[column.name] = Kind.JSON
        elif isinstance(column.type, Boolean):
            kinds[column.name] = Kind.BOOL
        else:
            kinds[column.name] = Kind.PLAIN
    return kinds


def quoted(names: list[str]) -> str:
    """Column names for SQL, quoted (names come from the models or a checked manifest)."""
    return ", ".join(f'"{name}"' for name in names)


def iso_to_sqlite_timestamp(value: str) -> str:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
