"""The upgrade moves the node, so its backup key moves with it: the signed backup the
upgrade takes restores into the new home, and the node's earlier backups still do."""

from __future__ import annotations

from pathlib import Path

from conftest import ESCADM, escadm, free_port

from esc.backup.signing import load_key
from esc.config import NodeHome
from esc.upgrade.backup_restore import Runner, _build_new_home
from esc.version import CURRENT


def test_the_new_home_gets_the_backup_key_and_the_signed_backup_verifies(tmp_path: Path) -> None:
    root = tmp_path / "nodes" / "home"
    escadm("init", "--api-port", str(free_port()), home=root, check=True)
    # Not in HOME/upgrade/: only the key, not where the archive lies, lets it restore.
    backup = root / "kept" / "backup.tar.gz"
    backup.parent.mkdir(mode=0o700)
    escadm("backup", "--file", str(backup), home=root, check=True)
    key = load_key(NodeHome(root))
    assert key is not None
    staging, rollback = root.with_name("home.upgrading"), root.with_name("home.rollback")

    steps: list[str] = []
    _build_new_home(
        NodeHome(root), staging, rollback, backup, ESCADM, ESCADM, CURRENT, Runner(steps.append)
    )

    assert "restore into the new node" in steps
    assert load_key(NodeHome(root)) == key  # HOME is the new node now
    earlier = rollback / "kept" / "backup.tar.gz"
    again = escadm("restore", "--file", str(earlier), "--json", home=root, check=True)
    assert '"verified": true' in again.stdout
