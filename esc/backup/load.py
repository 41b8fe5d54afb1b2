"""Loading an archive's rows into a database built aside (restore.py swaps it in).

The aside database is first migrated to the schema revision the backup was
taken at, so its tables are exactly the archive's; the rows go in table by
table (parents first); then Alembic brings it to this release's head, so a
backup of an older release crosses the real migrations.

PostgreSQL: the keys and indexes are dropped for the load and rebuilt after
it (pg_keys.py), and each member's bytes are copied straight into its table
(COPY ... FROM STDIN: the archive's rows are in COPY's text format), so the
server parses each value once, as pg_restore has it do. SQLite: values are
checked and converted here (copytext.py) and inserted by executemany.
Archives of format version 1 (JSON rows, ESC 1.0) go through load_json.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from sqlalchemy import Connection, MetaData, Table, text

from esc.backup import load_json
from esc.backup.archive import JSON_ROWS_FORMAT, ArchiveError, ArchiveReader, Member
from esc.backup.copytext import CANONICAL_SETTINGS, RowFormatError, field_reader, split_row
from esc.backup.load_json import Skip
from esc.backup.pg_keys import drop_keys
from esc.backup.spool import Spool
from esc.backup.tables import quoted
from esc.security import LOCAL_USER

BATCH = 10_000


def reflected_tables(connection: Connection) -> dict[str, Table]:
    """The tables as the database has them, parents first."""
    metadata = MetaData()
    metadata.reflect(connection)
    return {table.name: table for table in metadata.sorted_tables}


def _matching_table(tables: dict[str, Table], member: Member) -> Table:
    if member.table == "alembic_version":
        raise ArchiveError(
            f"the archive holds a table alembic_version ({member.name}): the schema revision "
            "is the manifest's schema_revision, never rows of the archive; it was altered"
        )
    table = tables.get(member.table)
    wanted = set(member.entry.columns)
    if table is None or {c.name for c in table.columns} != wanted:
        raise ArchiveError(
            f"table {member.table} of the archive does not match schema revision the manifest "
            "names: the archive was altered, or written by a release that is not ESC's"
        )
    return table


# Rows of an archive a restore leaves out on purpose, and why (escadm restore says so).
NOT_RESTORED = {
    "users": f"the {LOCAL_USER} account is node-local: this node keeps its own, whose "
    "secret is its data/escadm.credential"
}


def _skip_for(member: Member) -> Skip:
    """The node-local escadm account is the restoring node's own, never the archive's."""
    if member.table != "users":
        return None
    index = member.entry.columns.index("name")
    return lambda row: row[index] == LOCAL_USER


def load_all(connection: Connection, reader: ArchiveReader, spool: Spool) -> dict[str, int]:
    """Insert every table's rows, each member checked whole (spooled) before it is
    loaded; returns rows loaded per table."""
    tables = reflected_tables(connection)
    # Migrations may seed rows (op_mode's default): the archive's rows replace them all.
    for name in reversed(list(tables)):
        if name != "alembic_version":
            connection.exec_driver_sql(f'DELETE FROM "{name}"')
    postgresql = connection.dialect.name == "postgresql"
    json_rows = reader.manifest.format_version == JSON_ROWS_FORMAT
    if postgresql:
        for setting in CANONICAL_SETTINGS:
            connection.exec_driver_sql(f"SET LOCAL {setting}")
        keys = drop_keys(connection)
    loaded = {}
    for archived in reader.members():
        table = _matching_table(tables, archived)
        with spool.verified(archived) as member:
            loaded[member.table] = _load_member(connection, table, member, postgresql, json_rows)
    if postgresql:
        keys.rebuild(connection)
        _advance_sequences(connection, tables)
    return loaded


def _load_member(
    connection: Connection, table: Table, member: Member, postgresql: bool, json_rows: bool
) -> int:
    skip = _skip_for(member)
    if postgresql and json_rows:
        return load_json.load_postgresql(connection, table, member, skip)
    if postgresql:
        return _copy_postgresql(connection, table, member, skip)
    if json_rows:
        return _insert_sqlite(connection, table, member, load_json.sqlite_rows(table, member, skip))
    return _insert_sqlite(connection, table, member, _sqlite_rows(table, member, skip))


def _sqlite_rows(table: Table, member: Member, skip: Skip) -> Iterator[list[Any]]:
    columns = member.entry.columns
    readers = [field_reader(table.name, table.columns[c]) for c in columns]
    with _named_after(member):
        for line in member.lines():
            fields = split_row(line, len(columns))
            if skip is None or not skip(fields):
                yield [read(v) for read, v in zip(readers, fields, strict=True)]


@contextlib.contextmanager
def _named_after(member: Member) -> Iterator[None]:
    """A row that does not fit its table is reported with the member it is in."""
    try:
        yield
    except RowFormatError as exc:
        raise ArchiveError(f"{member.name}: {exc}: the archive is damaged or altered") from None
    except psycopg.Error as exc:  # PostgreSQL refused a value (COPY checks every one)
        where = (exc.diag.context or "").splitlines()[:1]
        detail = f"{exc.diag.message_primary or exc}" + (f" ({where[0][:200]})" if where else "")
        raise ArchiveError(f"{member.name}: {detail}: the archive is damaged or altered") from None


def _insert_sqlite(
    connection: Connection, table: Table, member: Member, rows: Iterable[list[Any]]
) -> int:
    columns = member.entry.columns
    sql = (
        f'INSERT INTO "{table.name}" ({quoted(columns)}) VALUES ({", ".join("?" for _ in columns)})'
    )
    cursor = connection.connection.driver_connection.cursor()
    batch: list[Any] = []
    total = 0
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            cursor.executemany(sql, batch)
            total += len(batch)
            batch.clear()
    if batch:
        cursor.executemany(sql, batch)
        total += len(batch)
    return total


def _copy_postgresql(connection: Connection, table: Table, member: Member, skip: Skip) -> int:
    """The member's bytes go to the server as they are read; it parses and checks them."""
    cursor = connection.connection.driver_connection.cursor()
    columns = member.entry.columns
    sent = 0
    with (
        _named_after(member),
        cursor.copy(f'COPY "{table.name}" ({quoted(columns)}) FROM STDIN') as copy,
    ):
        if skip is None:
            for chunk in member.chunks():
                copy.write(chunk)
                sent += chunk.count(b"\n")
        else:  # a small table (users): each row looked at
            for line in member.lines():
                if not skip(split_row(line, len(columns))):
                    copy.write(line + b"\n")
                    sent += 1
    if cursor.rowcount != sent:
        # A line "\." ends COPY's data early: the rows after it would be lost unseen.
        raise ArchiveError(
            f"{member.name}: the server took {cursor.rowcount} of its {sent} rows: the archive "
            "is damaged or altered"
        )
    return sent


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
