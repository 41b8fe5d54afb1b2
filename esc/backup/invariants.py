"""What the restored rows must satisfy before they replace the node's.

Checksums only say the archive is the one its manifest describes; a forged
archive with recomputed checksums passes them. The controller relies on
more than each value fitting its column: every reference resolving, the
copies it keeps of a parent's key agreeing with the parent (the engine
looks VMs up by vms.deployment_id: a VM whose copy disagrees with its
group's would be left running by an undeploy), one schema revision, and
names the API would accept. Each check reads the models (and the API's own
validators), so a table or column added later is checked as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection, String, Table, Text, and_, func, not_, or_, select

from esc.backup.archive import ArchiveError
from esc.backup.tables import backed_up_tables
from esc.db.migrate import head_revision
from esc.descriptor import Name
from esc.errors import InvalidRequest
from esc.monitor import scripts


@dataclass(frozen=True)
class Copy:
    """`table.column` repeats, for speed, the same column of the row that `table.via`
    refers to (a foreign key): the two must agree."""

    table: str
    column: str
    via: str


COPIES = (Copy("vms", "deployment_id", via="vm_group_id"),)

_NAME = TypeAdapter(Name)


def _api_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        _NAME.validate_python(value)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def _script(row: Any) -> str | None:
    try:
        scripts.validate(row.name, row.content, row.timeout)
    except InvalidRequest as exc:
        return str(exc)
    return None


# Per table: the names the API validates on the way in, and a row check of its own.
NAMES: dict[str, tuple[str, ...]] = {
    "tenants": ("name",),
    "deployments": ("name",),
    "vm_groups": ("name",),
    "subscriptions": ("tenant",),
}
ROW_CHECKS: dict[str, Callable[[Any], str | None]] = {"custom_scripts": _script}


def _refuse(table: Table, row: Any, problem: str) -> ArchiveError:
    key = ", ".join(f"{c.name}={getattr(row, c.name)!r}" for c in table.primary_key.columns)
    return ArchiveError(
        f"table {table.name}, row {key}: {problem}: the archive is inconsistent or was altered"
    )


def check_restored(connection: Connection) -> None:
    """Raise ArchiveError naming the table, the row and the problem of the first row
    that breaks an invariant."""
    _check_revision(connection)
    tables = {t.name: t for t in backed_up_tables()}
    for table in tables.values():
        _check_references(connection, table)
        _check_text(connection, table)
    for copy in COPIES:
        _check_copy(connection, tables[copy.table], copy)
    for name, columns in NAMES.items():
        _check_names(connection, tables[name], columns)
    for name, check in ROW_CHECKS.items():
        for row in connection.execute(select(tables[name])):
            if problem := check(row):
                raise _refuse(tables[name], row, problem)


def _check_revision(connection: Connection) -> None:
    found = list(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())
    head = head_revision()
    if found != [head]:
        raise ArchiveError(
            f"table alembic_version holds {found!r} after the migrations, not the one schema "
            f"revision {head!r}: the archive was altered"
        )


def _first(connection: Connection, query: Any) -> Any:
    return connection.execute(query.limit(1)).first()


def _check_references(connection: Connection, table: Table) -> None:
    """Every foreign key resolves (SQLite checks them only as rows go in, if at all)."""
    for constraint in table.foreign_key_constraints:
        parent = constraint.referred_table
        pairs = [(e.parent, parent.columns[e.column.name]) for e in constraint.elements]
        exists = select(1).where(and_(*(p == c for c, p in pairs))).correlate(table).exists()
        present = and_(*(c.isnot(None) for c, _ in pairs))
        row = _first(connection, select(table).where(present, not_(exists)))
        if row is not None:
            columns = ", ".join(f"{c.name}={getattr(row, c.name)!r}" for c, _ in pairs)
            raise _refuse(table, row, f"{columns} refers to no row of {parent.name}")


def _check_copy(connection: Connection, table: Table, copy: Copy) -> None:
    (constraint,) = [
        fk for fk in table.foreign_key_constraints if [c.name for c in fk.columns] == [copy.via]
    ]
    parent = constraint.referred_table
    (element,) = constraint.elements
    mine, theirs = table.columns[copy.column], parent.columns[copy.column]
    query = (
        select(table, theirs.label("parent_value"))
        .join(parent, element.parent == parent.columns[element.column.name])
        .where(or_(mine.is_(None), mine != theirs))
    )
    row = _first(connection, query)
    if row is not None:
        raise _refuse(
            table,
            row,
            f"{copy.column} {getattr(row, copy.column)!r} is not the {copy.column} "
            f"{row.parent_value!r} of the {parent.name} row it belongs to "
            f"({copy.via}={getattr(row, copy.via)!r})",
        )


def _text_columns(table: Table) -> Iterator[Any]:
    return (c for c in table.columns if isinstance(c.type, String | Text))


def _check_text(connection: Connection, table: Table) -> None:
    """No NUL in any text: the API never accepts one (PostgreSQL cannot even store it)."""
    if connection.dialect.name != "sqlite":
        return
    for column in _text_columns(table):
        row = _first(connection, select(table).where(func.instr(column, "\x00") > 0))
        if row is not None:
            raise _refuse(table, row, f"{column.name} holds a NUL character")


def _check_names(connection: Connection, table: Table, columns: tuple[str, ...]) -> None:
    for row in connection.execute(select(*(table.columns[c] for c in columns), *table.primary_key)):
        for column in columns:
            if problem := _api_name(getattr(row, column)):
                raise _refuse(
                    table, row, f"{column} {getattr(row, column)!r} is not a valid name: {problem}"
                )
