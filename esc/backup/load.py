"""Loading an archive's rows into a database built aside (restore.py swaps it in).

The aside database is first migrated to the schema revision the backup was
taken at, so its tables are exactly the archive's; the rows go in table by
table (parents first); then Alembic brings it to this release's head, so a
backup of an older release crosses the real migrations.

PostgreSQL: rows are copied into a jsonb staging table with COPY and moved
into place by one INSERT … SELECT per table, all in the server. SQLite: one
executemany per batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Column, Connection, Float, Integer, MetaData, Numeric, Table, text

from esc.backup.archive import ArchiveError, ArchiveReader, Member, decode_row
from esc.backup.tables import Kind, column_kinds, iso_to_sqlite_timestamp, quoted
from esc.security import LOCAL_USER

BATCH = 10_000
STAGING = "esc_restore_rows"
STAGE_ROWS = 50_000


def reflected_tables(connection: Connection) -> dict[str, Table]:
    """The tables as the database has them, parents first."""
    metadata = MetaData()
    metadata.reflect(connection)
    return {table.name: table for table in metadata.sorted_tables}


def _matching_table(tables: dict[str, Table], member: Member) -> Table:
    table = tables.get(member.table)
    wanted = set(member.entry.columns)
    if table is None or {c.name for c in table.columns} != wanted:
        raise ArchiveError(
            f"table {member.table} of the archive does not match schema revision the manifest "
            "names: the archive was altered, or written by a release that is not ESC's"
        )
    return table


def _rows(member: Member, skip: Callable[[list[Any]], bool]) -> Iterator[list[Any]]:
    width = len(member.entry.columns)
    count = 0
    for line in member.lines():
        row = decode_row(line, member.table, width)
        count += 1
        if not skip(row):
            yield row
    if count != member.entry.rows:
        raise ArchiveError(
            f"{member.table}: {count} rows in the archive, the manifest says {member.entry.rows}"
        )


def _skip_for(member: Member) -> Callable[[list[Any]], bool]:
    """The node-local escadm account is the restoring node's own, never the archive's."""
    if member.table != "users":
        return lambda row: False
    index = member.entry.columns.index("name")
    return lambda row: row[index] == LOCAL_USER


def load_all(connection: Connection, reader: ArchiveReader) -> dict[str, int]:
    """Insert every table's rows; returns rows loaded per table."""
    tables = reflected_tables(connection)
    # Migrations may seed rows (op_mode's default): the archive's rows replace them all.
    for name in reversed(list(tables)):
        if name != "alembic_version":
            connection.exec_driver_sql(f'DELETE FROM "{name}"')
    loader = _load_postgresql if connection.dialect.name == "postgresql" else _load_sqlite
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"CREATE TEMP TABLE {STAGING} (d jsonb)")
    loaded = {}
    for member in reader.members():
        table = _matching_table(tables, member)
        loaded[member.table] = loader(connection, table, member, _skip_for(member))
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"DROP TABLE {STAGING}")
        _advance_sequences(connection, tables)
    return loaded


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


def _load_sqlite(
    connection: Connection, table: Table, member: Member, skip: Callable[[list[Any]], bool]
) -> int:
    columns = member.entry.columns
    converters = [_sqlite_converter(table.name, table.columns[c]) for c in columns]
    sql = (
        f'INSERT INTO "{table.name}" ({quoted(columns)}) VALUES ({", ".join("?" for _ in columns)})'
    )
    cursor = connection.connection.driver_connection.cursor()
    batch: list[Any] = []
    total = 0
    for row in _rows(member, skip):
        batch.append([f(v) for f, v in zip(converters, row, strict=True)])
        if len(batch) >= BATCH:
            cursor.executemany(sql, batch)
            total += len(batch)
            batch.clear()
    if batch:
        cursor.executemany(sql, batch)
        total += len(batch)
    return total


def _copy_escape(line: bytes) -> bytes:
    """One JSON document as a line of COPY's text format."""
    if b"\\" in line:
        line = line.replace(b"\\", b"\\\\")
    if b"\t" in line or b"\r" in line:
        line = line.replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    return line


def _load_postgresql(
    connection: Connection, table: Table, member: Member, skip: Callable[[list[Any]], bool]
) -> int:
    """Rows go through the staging table STAGE_ROWS at a time, so it stays small (in
    temp buffers) whatever the archive holds."""
    cursor = connection.connection.driver_connection.cursor()
    width = len(member.entry.columns)
    insert = _insert_from_staging(connection, table, member.entry.columns)
    lines = iter(member.lines())
    users_filter = member.table == "users"
    count = loaded = 0
    while True:
        cursor.execute(f"TRUNCATE {STAGING}")
        staged = 0
        with cursor.copy(f"COPY {STAGING} (d) FROM STDIN") as copy:
            for line in lines:
                count += 1
                # Only the users' rows are decoded here; the server parses the rest (jsonb).
                if users_filter and skip(decode_row(line, member.table, width)):
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
                    f"{member.table}: {shape} rows are not arrays of the table's columns"
                )
            cursor.execute(insert)
            loaded += cursor.rowcount
        if staged < STAGE_ROWS:
            break
    if count != member.entry.rows:
        raise ArchiveError(
            f"{member.table}: {count} rows in the archive, the manifest says {member.entry.rows}"
        )
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


def _advance_sequences(connection: Connection, tables: dict[str, Table]) -> None:
    """Serial keys go on after the largest restored id (rows came with their ids)."""
    for table in tables.values():
        for column in table.primary_key.columns:
            sequence = connection.execute(
                text("SELECT pg_get_serial_sequence(:t, :c)"),
                {"t": f'"{table.name}"', "c": column.name},
            ).scalar()
            if sequence:
                connection.execute(
                    text(
                        f'SELECT setval(:s, coalesce((SELECT max("{column.name}") '
                        f'FROM "{table.name}"), 0) + 1, false)'
                    ),
                    {"s": sequence},
                )


def copy_local_account(source: Connection, target: Connection) -> None:
    """The restoring node keeps its own escadm account (its credential file is local)."""
    row = source.execute(
        text("SELECT name, password_hash, created_at FROM users WHERE name = :n"),
        {"n": LOCAL_USER},
    ).first()
    if row is None:
        return
    target.execute(text("DELETE FROM users WHERE name = :n"), {"n": LOCAL_USER})
    target.execute(
        text("INSERT INTO users (name, password_hash, created_at) VALUES (:n, :h, :c)"),
        {"n": row.name, "h": row.password_hash, "c": row.created_at},
    )
