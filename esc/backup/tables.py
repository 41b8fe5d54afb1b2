"""Which tables a backup holds, in which order, and how their values are written.

Parents before children (the models' foreign-key order), so a restore can
insert table by table; and the kinds of column whose values an archive
writes in a backend-neutral form (copytext.py).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Table

from esc.db.models import Base, UTCDateTime


class Kind(enum.Enum):
    PLAIN = "plain"
    DATETIME = "datetime"
    JSON = "json"
    BOOL = "bool"


def backed_up_tables() -> list[Table]:
    """Every table of the current models, parents first."""
    return list(Base.metadata.sorted_tables)


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
