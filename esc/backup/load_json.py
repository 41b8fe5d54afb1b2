"""Rows of archive format version 1 (ESC 1.0): one JSON array per row.

No longer written, still read, so that a backup of ESC 1.0 restores into
this release (the upgrade by Backup and Restore). PostgreSQL: the rows are
copied into a jsonb staging table and moved into place by an INSERT …
SELECT with casts, all in the server. SQLite: values are checked against
their columns here (load.py inserts them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Column, Connection, Float, Integer, Numeric, Table

from esc.backup.archive import ArchiveError, Member, decode_json_row
from esc.backup.tables import Kind, column_kinds, iso_to_sqlite_timestamp, quoted

# A row the restore leaves out (the node-local account), if any.
Skip = Callable[[list[Any]], bool] | None
STAGING = "esc_restore_rows"
STAGE_ROWS = 50_000


def sqlite_rows(table: Table, member: Member, skip: Skip) -> Iterator[list[Any]]:
    converters = [_sqlite_converter(table.name, table.columns[c]) for c in member.entry.columns]
    for line in member.lines():
        row = decode_json_row(line, member)
        if skip is None or not skip(row):
            yield [f(v) for f, v in zip(converters, row, strict=True)]


def _sqlite_converter(table: str, column: Column[Any]) -> Callable[[Any], Any]:
    """Checks a value against its column and converts it for SQLite, which would store
    any type in any column: a forged value is refused here, as PostgreSQL's casts do."""
    kind = column_kinds(column.table)[column.name]
    if kind is Kind.DATETIME:
        return _checked(table, column.name, str, iso_to_sqlite_timestamp)
    if kind is Kind.JSON:
        return lambda v: None if v is None else json.dumps(v)
    if kind is Kind.BOOL:
        return _checked(table, column.name, bool, int)
    if isinstance(column.type, Integer):
        return _checked(table, column.name, int, lambda v: v)
    if isinstance(column.type, Float | Numeric):
        return _checked(table, column.name, int | float, lambda v: v)
    return _checked(table, column.name, str, lambda v: v)


def _checked(
    table: str, column: str, wanted: Any, convert: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None:
            return None
        # bool is an int in Python, never in the archive.
        if not isinstance(value, wanted) or (isinstance(value, bool) and wanted is not bool):
            raise ArchiveError(
                f"{table}.{column}: value {str(value)[:40]!r} has the wrong type: the archive "
                "is damaged or altered"
            )
        try:
            return convert(value)
        except (ValueError, TypeError):
            raise ArchiveError(
                f"{table}.{column}: {str(value)[:40]!r} is not an ISO 8601 timestamp: the "
                "archive is damaged or altered"
            ) from None

    return check


def _copy_escape(line: bytes) -> bytes:
    """One JSON document as a line of COPY's text format."""
    if b"\\" in line:
        line = line.replace(b"\\", b"\\\\")
    if b"\t" in line or b"\r" in line:
        line = line.replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    return line


def load_postgresql(connection: Connection, table: Table, member: Member, skip: Skip) -> int:
    """Rows go through the staging table STAGE_ROWS at a time, so it stays small (in
    temp buffers) whatever the archive holds."""
    connection.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (d jsonb)")
    cursor = connection.connection.driver_connection.cursor()
    width = len(member.entry.columns)
    insert = _insert_from_staging(connection, table, member.entry.columns)
    lines = iter(member.lines())
    loaded = 0
    while True:
        cursor.execute(f"TRUNCATE {STAGING}")
        staged = 0
        with cursor.copy(f"COPY {STAGING} (d) FROM STDIN") as copy:
            for line in lines:
                # Only the users' rows are decoded here; the server parses the rest (jsonb).
                if skip is not None and skip(decode_json_row(line, member)):
                    continue
                copy.write(_copy_escape(line) + b"\n")
                staged += 1
                if staged == STAGE_ROWS:
                    break
        if staged:
            shape = cursor.execute(
                f"SELECT count(*) FROM {STAGING} WHERE jsonb_typeof(d) <> 'array' "
                "OR jsonb_array_length(d) <> %s",
                (width,),
            ).fetchone()[0]
            if shape:
                raise ArchiveError(
                    f"{member.name}: {shape} rows are not arrays of the table's columns"
                )
            cursor.execute(insert)
            loaded += cursor.rowcount
        if staged < STAGE_ROWS:
            break
    return loaded


def _insert_from_staging(connection: Connection, table: Table, columns: list[str]) -> str:
    kinds = column_kinds(table)
    values = []
    for index, name in enumerate(columns):
        if kinds[name] is Kind.JSON:
            values.append(f"(d->{index})::json")
        else:
            sql_type = table.columns[name].type.compile(dialect=connection.dialect)
            values.append(f"(d->>{index})::{sql_type}")
    return (
        f'INSERT INTO "{table.name}" ({quoted(columns)}) SELECT {", ".join(values)} FROM {STAGING}'
    )
