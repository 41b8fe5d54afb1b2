"""May a pair take a target release in service: the schema path to its head.

In an in-service upgrade the upgraded standby replicates the old release's
primary (physical replication: it cannot migrate) and migrates when it takes
the active role, at the switchover. The path from the pair's revision to the
target's head is online only when every migration on it is an expand: the old
release then still runs on the result, so a quick rollback (switching back to
a node of the old release) stays possible. A contract migration on the path
makes that impossible, and the upgrade is refused for an offline method.

The target's migrations are read from its wheel (a zip) as text and parsed:
the wheel's code is never imported or run. Only the migrations after the
pair's revision are judged; those at or before it are applied already, so a
release older than esc_kind (whose scripts declare none) is judged only by
the migrations it adds. A migration on the path without a valid esc_kind is
refused: whether the old release could run on its result is not known.
"""

from __future__ import annotations

import ast
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from esc.db.schema_compat import CONTRACT, EXPAND, KINDS
from esc.upgrade.backup_restore import UpgradeError

VERSIONS_DIR = "esc/db/migrations/versions/"
OFFLINE_METHODS = (
    "upgrade by Backup and Restore, or in service with the pair in maintenance "
    "(the old release stopped before the new one migrates)"
)


@dataclass(frozen=True)
class MigrationScript:
    """What a migration script declares, read without running it."""

    file: str
    revision: str
    down_revisions: tuple[str, ...]  # none for the base, two or more for a merge
    kind: str | None  # esc_kind; None when the script declares none


@dataclass(frozen=True)
class SchemaPath:
    current: str
    target_head: str
    allowed: bool
    revisions: list[str] = field(default_factory=list)  # applied at the switchover, in order
    reason: str = ""
    next_step: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


_NAMES = ("revision", "down_revision", "esc_kind")


def parse_script(file: str, source: str) -> MigrationScript:
    """The revision, down_revision and esc_kind a script assigns as literals."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise UpgradeError(
            f"migration {file} does not parse ({exc.msg}, line {exc.lineno})"
        ) from None
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _NAMES:
            try:
                found[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                raise UpgradeError(
                    f"migration {file} assigns {target.id} something other than a literal: "
                    "its revisions cannot be read without running it"
                ) from None
    revision, down, kind = (found.get(name) for name in _NAMES)
    if not isinstance(revision, str):
        raise UpgradeError(f"migration {file} declares no revision: it is not an alembic script")
    downs = (down,) if isinstance(down, str) else tuple(down or ())
    if not all(isinstance(d, str) for d in downs):
        raise UpgradeError(f"migration {file} has a down_revision that is not revision ids")
    return MigrationScript(file, revision, downs, None if kind is None else str(kind))


def wheel_migrations(wheel: Path) -> dict[str, MigrationScript]:
    """The migration scripts of a release's wheel, by revision."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            sources = {
                name: archive.read(name).decode()
                for name in archive.namelist()
                if name.startswith(VERSIONS_DIR)
                and name.endswith(".py")
                and "/" not in name[len(VERSIONS_DIR) :]
                and not name.endswith("/__init__.py")
            }
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise UpgradeError(f"{wheel} is not a readable wheel ({exc})") from None
    if not sources:
        raise UpgradeError(f"{wheel} has no {VERSIONS_DIR}*.py: it is not an ESC release")
    scripts: dict[str, MigrationScript] = {}
    for name, source in sorted(sources.items()):
        script = parse_script(name.removeprefix(VERSIONS_DIR), source)
        if script.revision in scripts:
            raise UpgradeError(
                f"{wheel}: revision {script.revision} is in both "
                f"{scripts[script.revision].file} and {script.file}"
            )
        scripts[script.revision] = script
    return scripts


def _head(wheel: Path, scripts: dict[str, MigrationScript]) -> str:
    below = {d for s in scripts.values() for d in s.down_revisions}
    for script in scripts.values():
        for down in script.down_revisions:
            if down not in scripts:
                raise UpgradeError(
                    f"{wheel}: migration {script.revision} follows {down}, which the wheel "
                    "does not have: its migration history is broken"
                )
    heads = sorted(set(scripts) - below)
    if len(heads) != 1:
        raise UpgradeError(f"{wheel}: the migration history has heads {heads}, not one")
    return heads[0]


def wheel_head(wheel: Path) -> str:
    """The schema revision a release's wheel brings its database to."""
    return _head(wheel, wheel_migrations(wheel))


def _ancestry(scripts: dict[str, MigrationScript], revision: str) -> set[str]:
    seen: set[str] = set()
    stack = [revision]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(scripts[current].down_revisions)
    return seen


def _in_order(scripts: dict[str, MigrationScript], head: str, applied: set[str]) -> list[str]:
    """The revisions from `applied` up to `head`, each after those it follows."""
    ordered: list[str] = []
    placed = set(applied)
    stack: list[tuple[str, bool]] = [(head, False)]
    while stack:
        revision, parents_done = stack.pop()
        if revision in placed:
            continue
        if parents_done:
            placed.add(revision)
            ordered.append(revision)
            continue
        stack.append((revision, True))
        stack.extend((d, False) for d in scripts[revision].down_revisions if d not in placed)
    return ordered


def schema_path(wheel: Path, current: str) -> SchemaPath:
    """Whether a pair at schema revision `current` can take the wheel's release in
    service: the migrations it would apply at the switchover, or why not."""
    scripts = wheel_migrations(wheel)
    head = _head(wheel, scripts)
    if current not in scripts:
        return SchemaPath(
            current,
            head,
            allowed=False,
            reason=(
                f"the target's migration history (head {head}) does not contain the pair's "
                f"schema revision {current}: it is not a newer release of this schema"
            ),
            next_step=f"choose a release whose migrations include revision {current}",
        )
    revisions = _in_order(scripts, head, _ancestry(scripts, current))
    blocking = [scripts[r] for r in revisions if scripts[r].kind != EXPAND]
    if not blocking:
        return SchemaPath(
            current,
            head,
            allowed=True,
            revisions=revisions,
            reason=(
                f"expand-only from {current} to {head}: the old release runs on the result"
                if revisions
                else f"the target's schema is the pair's, {head}: nothing is migrated"
            ),
        )
    return SchemaPath(
        current,
        head,
        allowed=False,
        revisions=revisions,
        reason="; ".join(_why_not_online(s) for s in blocking),
        next_step=OFFLINE_METHODS,
    )


def _why_not_online(script: MigrationScript) -> str:
    if script.kind == CONTRACT:
        return (
            f"migration {script.revision} ({script.file}) is a contract migration: the old "
            "release could not run on its result, so a quick rollback would be impossible"
        )
    declared = "declares no esc_kind" if script.kind is None else f"has esc_kind {script.kind!r}"
    return (
        f"migration {script.revision} ({script.file}) {declared}, not one of "
        f"{', '.join(KINDS)}: whether the old release could run on its result is not known"
    )
