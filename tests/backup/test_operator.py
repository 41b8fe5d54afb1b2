"""What an operator following the README meets: a backup never replaces a file unasked,
a restore says the node is left in MAINTENANCE and how to leave it, and why it restored
fewer rows than the backup printed."""

from __future__ import annotations

import re
from pathlib import Path

from backup_helpers import make_node_fixture  # noqa: F401 - the make_node fixture
from conftest import escadm, escadm_ok

from esc.db.models import ControllerSetting
from esc.db.session import Database
from esc.engine.op_mode import OP_MODE


def set_op_mode(db: Database, mode: str) -> None:
    with db.write() as session:
        session.merge(ControllerSetting(name=OP_MODE, value=mode))


def rows_printed(output: str) -> int:
    return int(re.search(r": (\d+) rows", output).group(1))


def test_backup_refuses_to_replace_a_file_unless_forced(make_node, tmp_path: Path) -> None:
    node = make_node("sqlite", "node")
    target = tmp_path / "db.tar.gz"
    target.write_bytes(b"the operator's other file")

    refused = escadm("backup", "--file", str(target), home=node.home.root)

    assert refused.returncode == 2, refused.stderr
    assert str(target) in refused.stderr and "--force" in refused.stderr
    assert target.read_bytes() == b"the operator's other file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".db.tar.gz")]

    escadm_ok("backup", "--file", str(target), "--force", home=node.home.root)
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # now the backup, gzip


def test_restore_says_the_node_is_in_maintenance_and_why_rows_differ(
    make_node, tmp_path: Path
) -> None:
    node = make_node("sqlite", "node")
    db = Database(node.home.database_url(node.settings), pool_size=1, max_overflow=0)
    try:
        set_op_mode(db, "MAINTENANCE")
    finally:
        db.dispose()
    archive = tmp_path / "db.tar.gz"
    backed_up = escadm_ok("backup", "--file", str(archive), home=node.home.root)

    restored = escadm_ok("restore", "--file", str(archive), home=node.home.root)

    difference = rows_printed(backed_up) - rows_printed(restored)
    assert difference == 1, (backed_up, restored)
    assert "users: 1 of the archive's" in restored and "escadm account is node-local" in restored
    assert "the node is in MAINTENANCE" in restored
    assert "escadm op_mode set --mode=operation" in restored

    set_op_mode(db, "OPERATION")
    db.dispose()
    second = tmp_path / "operation.tar.gz"
    escadm_ok("backup", "--file", str(second), home=node.home.root)
    in_operation = escadm_ok("restore", "--file", str(second), home=node.home.root)
    assert "MAINTENANCE" not in in_operation
