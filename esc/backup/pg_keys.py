"""Keys and indexes of the aside PostgreSQL schema, dropped for the load and rebuilt.

Loading a million rows into tables with their indexes and foreign keys in
place costs an index insertion and a key check per row; building each index
once after the load (one sort) and checking each foreign key in one join is
what pg_restore does, and much cheaper. The aside schema is the restore's
own until the swap, so nothing else sees it without its keys; rebuilding
them also checks the archive's rows (a duplicate key or a dangling reference
fails the restore before the swap).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

# Constraints in the current schema: primary keys and uniques ('p', 'u'), then foreign
# keys ('f'); check constraints stay (they cost little per row).
_CONSTRAINTS = text(
    """
    SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype
    FROM pg_constraint c
    WHERE c.connamespace = current_schema()::regnamespace AND c.contype IN ('p', 'u', 'f')
    ORDER BY c.contype = 'f', c.conrelid::regclass::text, c.conname
    """
)
# Indexes that no constraint owns.
_INDEXES = text(
    """
    SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
    WHERE t.relnamespace = current_schema()::regnamespace
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
    ORDER BY 1
    """
)


@dataclass(frozen=True)
class _Constraint:
    table: str
    name: str
    definition: str
    foreign: bool

    def add(self) -> str:
        return f'ALTER TABLE {self.table} ADD CONSTRAINT "{self.name}" {self.definition}'

    def drop(self) -> str:
        return f'ALTER TABLE {self.table} DROP CONSTRAINT "{self.name}"'


@dataclass(frozen=True)
class DeferredKeys:
    """What drop_keys took away, to be put back by rebuild()."""

    constraints: list[_Constraint]
    indexes: list[tuple[str, str]]

    def rebuild(self, connection: Connection) -> None:
        """Indexes and keys first, foreign keys last (they need their parents' keys)."""
        for constraint in self.constraints:
            if not constraint.foreign:
                connection.exec_driver_sql(constraint.add())
        for _, definition in self.indexes:
            connection.exec_driver_sql(definition)
        for constraint in self.constraints:
            if constraint.foreign:
                connection.exec_driver_sql(constraint.add())


def drop_keys(connection: Connection) -> DeferredKeys:
    """Drop the current schema's keys and indexes; returns how to rebuild them."""
    constraints = [
        _Constraint(table, name, definition, kind == "f")
        for table, name, definition, kind in connection.execute(_CONSTRAINTS)
    ]
    indexes = [(name, definition) for name, definition in connection.execute(_INDEXES)]
    for constraint in sorted(constraints, key=lambda c: not c.foreign):
        connection.exec_driver_sql(constraint.drop())  # foreign keys first: they use the keys
    for name, _ in indexes:
        connection.exec_driver_sql(f"DROP INDEX {name}")
    return DeferredKeys(constraints, indexes)
