"""`escadm health` reports each check once and changes nothing on the node."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import escadm


def _tree(root: Path) -> dict[str, int | None]:
    """Every path of the node but its logs, with each file's content hash. (Directory
    times are left out: the checks' probes, a temporary file in the VIM's directory and
    SQLite's -wal/-shm, come and go.)"""
    return {
        str(p.relative_to(root)): hash(p.read_bytes()) if p.is_file() else None
        for p in root.rglob("*")
        if "log" not in p.relative_to(root).parts
    }


@pytest.mark.slow
def test_health_has_no_side_effects_and_lists_each_check_once(home: Path) -> None:
    assert escadm("start", home=home).returncode == 0
    assert escadm("stop", home=home).returncode == 0
    # What a deletion interrupted by a crash leaves: only the controller's start finishes it.
    instances = home / "data" / "vim" / "local" / "instances"
    assert instances.is_dir()
    tombstone = instances / ".deleting-vm1-0123abcd"
    tombstone.mkdir()
    (tombstone / "console.log").write_text("boot\n")
    before = _tree(home)
    stopped = escadm("health", "--json", home=home)
    assert stopped.returncode == 1
    assert tombstone.is_dir(), "escadm health removed a tombstone"
    assert _tree(home) == before, "escadm health changed the node's files"
    names = [c["name"] for c in json.loads(stopped.stdout)["checks"]]
    assert len(names) == len(set(names)), names

    assert escadm("start", home=home).returncode == 0
    deadline = time.monotonic() + 10
    while tombstone.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tombstone.exists(), "the controller's start did not finish the deletion"
    running = json.loads(escadm("health", "--json", home=home).stdout)
    names = [c["name"] for c in running["checks"]]
    assert sorted(names) == sorted(
        ["api", "database", "vim", "engine", "notifier", "escmanager", "mona"]
    ), names
    assert running["passed"]
