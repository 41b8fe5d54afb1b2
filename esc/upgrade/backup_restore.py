"""The Backup and Restore upgrade of a standalone node, and its rollback.

The seed's fifteen manual steps as one command, each step the escadm
command an operator would type, run with the release it belongs to:

  plan check (the upgrade planner) → op_mode maintenance → ip_trans --wait
  → backup → stop → install the new release into its own venv → a new node
  home with the same parameters (esc.toml copied) → restore → the local
  VIM's instances moved over (the VMs keep running: their processes are
  never touched) → homes swapped: HOME becomes the new node, the old one
  is kept as HOME.rollback → start → health and version checked →
  op_mode operation.

A record in the new home (upgrade.json) says where the old node and its
release are, so `escadm upgrade rollback` can bring the old node back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from esc.backup.signing import UPGRADE_DIR, UPGRADE_STAGING_SUFFIX
from esc.config import NodeHome, Settings
from esc.files import write_atomic
from esc.release.catalog import Catalog, CatalogError, parse_catalog
from esc.release.numbers import ReleaseNumber
from esc.release.planner import plan_upgrade
from esc.release.procedures import Method
from esc.release.wheel import WheelError, read_member, wheel_release
from esc.version import CURRENT

RECORD = "upgrade.json"
CATALOG_MEMBER = "esc/release/catalog.toml"
STEP_TIMEOUT = 900.0


class UpgradeError(Exception):
    """A step failed or the upgrade is refused; the message says what to do."""


@dataclass
class UpgradeRecord:
    old_version: str
    new_version: str
    old_home: str  # where the old node now is (HOME.rollback)
    old_escadm: str
    new_escadm: str
    backup: str
    upgraded_at: str

    def save(self, home: Path) -> None:
        write_atomic(home / RECORD, json.dumps(asdict(self), indent=1).encode())

    @classmethod
    def load(cls, home: Path) -> UpgradeRecord:
        try:
            return cls(**json.loads((home / RECORD).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UpgradeError(
                f"{home / RECORD} is missing or unreadable ({exc}): this node was not upgraded "
                "by escadm upgrade backup-restore, there is nothing to roll back to"
            ) from None


def wheel_catalog(wheel: Path) -> Catalog:
    """The new release's catalog: it, not this older one, knows which sources it accepts."""
    try:
        text = read_member(wheel, lambda n: n == CATALOG_MEMBER, CATALOG_MEMBER)
        return parse_catalog(text, f"{wheel}:{CATALOG_MEMBER}")
    except (WheelError, CatalogError) as exc:
        raise UpgradeError(str(exc)) from None


def wheel_version(wheel: Path) -> ReleaseNumber:
    """The release a wheel holds, from its metadata (not its file name)."""
    try:
        return wheel_release(wheel)
    except WheelError as exc:
        raise UpgradeError(str(exc)) from None


def check_plan(target: ReleaseNumber, catalog: Catalog, settings: Settings) -> None:
    plan = plan_upgrade(catalog, CURRENT, target, settings.vim.driver, ha=False)
    if not plan.allowed or Method.BACKUP_RESTORE not in plan.methods:
        raise UpgradeError(
            f"upgrade {CURRENT} → {target} by Backup and Restore is refused: "
            f"{plan.reason or 'the planner does not offer Backup and Restore'}; "
            f"next: {plan.next_step or f'escadm upgrade plan --to {target}'}"
        )


def _sibling(home: Path, suffix: str) -> Path:
    return home.with_name(home.name + suffix)


class Runner:
    """Runs one escadm command of a step; a failure stops the procedure."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report

    def __call__(self, step: str, command: list[str], timeout: float = STEP_TIMEOUT) -> str:
        self.report(step)
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpgradeError(f"{step}: {' '.join(command)} failed: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[-800:]
            raise UpgradeError(f"{step}: {' '.join(command)} exited {result.returncode}: {detail}")
        return result.stdout


def _escadm_of(python: Path) -> str:
    return str(python.with_name("escadm"))


def upgrade(
    home: NodeHome,
    settings: Settings,
    wheel: Path,
    venv: Path | None,
    report: Callable[[str], None],
) -> UpgradeRecord:
    if settings.database.url:
        raise UpgradeError(
            "this node's database is external ([database] url is set): the Backup and Restore "
            "upgrade of this command moves a node whose SQLite database is in its home; for an "
            "external database follow docs/upgrade-policy.md by hand"
        )
    target = wheel_version(wheel)
    check_plan(target, wheel_catalog(wheel), settings)
    root = home.root
    staging, rollback = _sibling(root, UPGRADE_STAGING_SUFFIX), _sibling(root, ".rollback")
    for leftover in (staging, rollback):
        if leftover.exists():
            raise UpgradeError(
                f"{leftover} exists (an earlier upgrade): finish or roll it back "
                "(escadm upgrade rollback), or remove it"
            )
    venv = venv or root.parent / f"esc-{target}"
    old = _escadm_of(Path(sys.executable))
    run = Runner(report)
    at = ["--home", str(root)]
    run("maintenance mode", [old, "op_mode", "set", "--mode=maintenance", *at])
    run("waiting for transactions in progress", [old, "ip_trans", "--wait", *at])
    backup = root / UPGRADE_DIR / f"backup-{CURRENT}-{int(time.time())}.tar.bz2"
    backup.parent.mkdir(mode=0o700, exist_ok=True)
    run("backup", [old, "backup", "--file", str(backup), *at])
    run("stopping the old node", [old, "stop", *at])
    try:
        new = _install(venv, wheel, target, run)
        record = _build_new_home(home, staging, rollback, backup, new, old, target, run)
    except UpgradeError:
        _undo_staging(root, staging, rollback)
        run("starting the old node again", [old, "start", *at])
        run("operation mode", [old, "op_mode", "set", "--mode=operation", *at])
        raise
    try:
        run("starting the new node", [new, "start", *at])
        run("health check", [new, "health", *at])
        version = json.loads(run("version check", [new, "version", "--json"]))
        if version.get("full") != str(target):
            raise UpgradeError(f"the new release reports version {version}, not {target}")
        run("operation mode", [new, "op_mode", "set", "--mode=operation", *at])
    except UpgradeError as exc:
        raise UpgradeError(
            f"{exc}; the old node is kept at {rollback}: bring it back with escadm upgrade rollback"
        ) from None
    return record


def _install(venv: Path, wheel: Path, target: ReleaseNumber, run: Runner) -> str:
    if not (venv / "bin" / "python").exists():
        run(f"creating {venv}", [sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run(
        f"installing ESC {target} into {venv}",
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
    )
    return _escadm_of(python)


def _build_new_home(
    home: NodeHome,
    staging: Path,
    rollback: Path,
    backup: Path,
    new: str,
    old: str,
    target: ReleaseNumber,
    run: Runner,
) -> UpgradeRecord:
    root = home.root
    port = str(home.load().api.port)
    run("a new node home", [new, "init", "--api-port", port, "--home", str(staging)])
    shutil.copy2(root / "esc.toml", staging / "esc.toml")  # the same parameters
    if home.tls_dir.is_dir():  # the certificate esc.toml names by a path in the home
        shutil.copytree(home.tls_dir, staging / home.tls_dir.name, dirs_exist_ok=True)
    # The same node, so the same backup key: the backup just taken (signed with it)
    # verifies, and so do the node's earlier backups after the upgrade.
    if home.backup_key_file.exists():
        shutil.copy2(home.backup_key_file, NodeHome(staging).backup_key_file)
    run(
        "restore into the new node", [new, "restore", "--file", str(backup), "--home", str(staging)]
    )
    # The VMs' instances move with the node; their processes keep running throughout.
    _move_vim_state(root, staging)
    root.rename(rollback)
    staging.rename(root)
    record = UpgradeRecord(
        old_version=str(CURRENT),
        new_version=str(target),
        old_home=str(rollback),
        old_escadm=old,
        new_escadm=new,
        backup=str(rollback / backup.relative_to(root)),
        upgraded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    record.save(root)
    return record


def _move_vim_state(source: Path, target: Path, replace: bool = True) -> None:
    """Move the VIM drivers' state (the local VIM's instances, the connections' state)
    from the home `source` to the home `target`: what the VMs need moves with the node.
    `replace`: what `target` has is given up for it; else `target`'s is kept."""
    for directory in NodeHome(source).vim_state:
        moved = target / directory.relative_to(source)
        if not directory.exists():
            continue
        if moved.exists():
            if not replace:
                continue
            shutil.rmtree(moved, ignore_errors=True)
        moved.parent.mkdir(parents=True, exist_ok=True)
        directory.rename(moved)


def _undo_staging(root: Path, staging: Path, rollback: Path) -> None:
    """Put the old home back where it was, with its VMs' instances."""
    if rollback.exists() and not root.exists():
        rollback.rename(root)
    elif rollback.exists() and root.exists():
        _move_vim_state(root, rollback, replace=False)
        root.rename(staging if not staging.exists() else _sibling(root, ".failed"))
        rollback.rename(root)
    if staging.exists():
        _move_vim_state(staging, root, replace=False)
    if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)


def rollback(home: NodeHome, report: Callable[[str], None]) -> UpgradeRecord:
    """Stop the upgraded node and bring the old one back, its VMs with it."""
    root = home.root
    record = UpgradeRecord.load(root)
    old_home = Path(record.old_home)
    if not old_home.is_dir():
        raise UpgradeError(f"the old node's home {old_home} is gone: nothing to roll back to")
    run = Runner(report)
    at = ["--home", str(root)]
    run("stopping the new node", [record.new_escadm, "stop", *at])
    failed = _sibling(root, f".failed-{record.new_version}")
    if failed.exists():
        shutil.rmtree(failed)
    _move_vim_state(root, old_home)
    root.rename(failed)
    old_home.rename(root)
    run("starting the old node", [record.old_escadm, "start", *at])
    run("health check", [record.old_escadm, "health", *at])
    run("operation mode", [record.old_escadm, "op_mode", "set", "--mode=operation", *at])
    return record
