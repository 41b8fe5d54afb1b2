"""A node's files are private to its owner: 0600 files, 0700 directories, after
`escadm init` and after the node has run (database, -wal/-shm, records, logs, VMs)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import ESCADM, escadm, escadm_ok, free_port, kill_vms

from esc.config import NodeHome

EXAMPLE = Path(__file__).parents[2] / "examples" / "deployment.yaml"


def _open_to_others(home: Path) -> list[str]:
    """Paths under `home` that the group or others may read, write or enter."""
    return [
        f"{p.relative_to(home)} {stat.filemode(p.lstat().st_mode)}"
        for p in [home, *home.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]


def _escadm_with_umask(*args: str, home: Path) -> subprocess.CompletedProcess:
    """As an operator's shell runs it: the usual umask 022, which makes files 0644."""
    old = os.umask(0o022)
    try:
        return subprocess.run(
            [ESCADM, *args, "--home", str(home)], capture_output=True, text=True, timeout=120
        )
    finally:
        os.umask(old)


@pytest.mark.slow
def test_node_files_are_private_after_init_and_after_a_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _escadm_with_umask("init", "--api-port", str(free_port()), home=home)
    assert init.returncode == 0, init.stderr
    database = home / "data" / "esc.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    for directory in ("", "data", "log", "run"):
        assert stat.S_IMODE((home / directory).stat().st_mode) == 0o700, directory
    assert _open_to_others(home) == []

    try:
        assert _escadm_with_umask("start", home=home).returncode == 0
        escadm_ok("script", "import", str(EXAMPLE.with_name("servicebooted.sh")), home=home)
        escadm_ok("deployment", "deploy", str(EXAMPLE), home=home)
        # While it runs: SQLite's -wal and -shm, the records under run/, the logs.
        assert (home / "data" / "esc.db-wal").exists()
        assert (home / "run" / "escmanager.json").exists()
        assert _open_to_others(home) == []
        escadm_ok("deployment", "undeploy", "web", home=home)
    finally:
        escadm("stop", home=home)
        kill_vms(NodeHome(home))
    assert (home / "log" / "escmanager.log").exists()
    assert _open_to_others(home) == []
