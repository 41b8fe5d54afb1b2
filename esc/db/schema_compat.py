"""Which code may run on a schema: expand and contract migrations.

Every migration declares its kind, `esc_kind`:
- "expand": it only adds (a table, a nullable or defaulted column, an index, a row),
  so the code of the revision before it keeps working on the result;
- "contract": it removes, renames or changes something older code uses.

So the code of a revision runs on every later schema up to the next contract
migration. The schema's "compatible from" revision is the newest contract
migration applied (the base when there is none): code whose history holds it
may run on the schema, even one newer than its own head. That is what lets a
pair go back to its previous release quickly after an expand-only upgrade.

The floor is written into the table schema_compat beside alembic's own
alembic_version, in the transaction of every migration run (the environment
calls `record`), because the release that must read it is an older one that
does not know the newer revisions and so could not work it out from scripts it
does not have. The table is bookkeeping of the schema, like alembic_version: it
is not a model, so backups do not carry it; a restore writes it afresh.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection

EXPAND = "expand"
CONTRACT = "contract"
KINDS = (EXPAND, CONTRACT)
KIND_HELP = (
    'declare esc_kind = "expand" when the code of the revision before it keeps working '
    'on the result (only additions), else esc_kind = "contract"'
)

TABLE = "schema_compat"
_record = sa.table(TABLE, sa.column("revision", sa.String), sa.column("compatible_from", sa.String))


class MigrationKindError(RuntimeError):
    """A migration script without a valid esc_kind."""


class SchemaTooNew(RuntimeError):
    """The schema is from a newer release that this code cannot run on."""


def kind_of(script: Script) -> str:
    kind = getattr(script.module, "esc_kind", None)
    if kind not in KINDS:
        raise MigrationKindError(
            f"migration {script.revision} ({Path(script.path).name}) has esc_kind = {kind!r}: "
            + KIND_HELP
        )
    return kind


def is_known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def compatible_from(scripts: ScriptDirectory, revision: str) -> str:
    """The newest contract migration at or below `revision`, else the base."""
    chain = list(scripts.iterate_revisions(revision, "base"))
    for script in chain:
        if kind_of(script) == CONTRACT:
            return script.revision
    return chain[-1].revision


def is_at_or_below(scripts: ScriptDirectory, older: str, newer: str) -> bool:
    """Whether revision `older` is `newer` or one it follows (both known)."""
    return any(s.revision == older for s in scripts.iterate_revisions(newer, "base"))


def not_expand_after(scripts: ScriptDirectory, older: str, newer: str) -> list[Script]:
    """The migrations after `older` up to `newer` (at or below it) that are not expand,
    newest first: the code of `older` may run on the schema of `newer` only without them.
    One without a valid esc_kind counts among them: what older code makes of its
    result is not known."""
    blocking = []
    for script in scripts.iterate_revisions(newer, older):
        if script.revision == older:
            continue
        try:
            kind = kind_of(script)
        except MigrationKindError:
            kind = None
        if kind != EXPAND:
            blocking.append(script)
    return blocking


def include_object(
    _object: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any
) -> bool:
    """For comparing the database with the models: the record is not a model's table."""
    return not (type_ == "table" and name == TABLE)


def record(connection: Connection, scripts: ScriptDirectory, revision: str | None) -> None:
    """Write the floor of `revision` (the schema's now), once its migration made the table."""
    if revision is None or not sa.inspect(connection).has_table(TABLE):
        return  # below the revision that makes the table, or migrated down to base
    floor = compatible_from(scripts, revision)
    if recorded(connection) == (revision, floor):
        return
    connection.execute(_record.delete())
    connection.execute(_record.insert().values(revision=revision, compatible_from=floor))


def recorded(connection: Connection) -> tuple[str, str] | None:
    """(revision, compatible_from) as the schema has them, None without a record."""
    if not sa.inspect(connection).has_table(TABLE):
        return None
    rows = connection.execute(sa.select(_record.c.revision, _record.c.compatible_from)).all()
    return (rows[0][0], rows[0][1]) if len(rows) == 1 else None


class Fit(enum.StrEnum):
    """How a database's schema stands to this release's migrations."""

    CURRENT = "current"  # at this release's head
    BEHIND = "behind"  # empty or a revision of this release's history: migrated to head
    AHEAD_COMPATIBLE = "ahead-compatible"  # newer, expand-only beyond this head
    AHEAD_INCOMPATIBLE = "ahead-incompatible"  # newer, with a contract this code lacks


@dataclass(frozen=True)
class SchemaFit:
    revision: str | None  # the database's (None: an empty database)
    head: str  # this release's
    fit: Fit
    compatible_from: str | None = None  # recorded by the newer release (ahead only)

    def refusal(self) -> str:
        """Why this release cannot run on the schema, and the fix."""
        if self.compatible_from is None:
            why = "and records no revision older code may run on it"
        else:
            why = (
                f"compatible only from revision {self.compatible_from}, which this release "
                "does not have (a contract migration removed or changed what it uses)"
            )
        return (
            f"the database schema is at revision {self.revision}, from a newer release, {why}; "
            f"this release's schema is {self.head}: upgrade this node to the release of "
            f"schema {self.revision}"
        )


def assess(connection: Connection, scripts: ScriptDirectory, head: str) -> SchemaFit:
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision == head:
        return SchemaFit(revision, head, Fit.CURRENT)
    if revision is None or is_known(scripts, revision):
        return SchemaFit(revision, head, Fit.BEHIND)
    found = recorded(connection)
    # A record left from another revision says nothing about this one.
    floor = found[1] if found and found[0] == revision else None
    fit = Fit.AHEAD_COMPATIBLE if floor and is_known(scripts, floor) else Fit.AHEAD_INCOMPATIBLE
    return SchemaFit(revision, head, fit, floor)
