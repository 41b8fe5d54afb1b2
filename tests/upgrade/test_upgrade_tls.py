"""A node serving HTTPS keeps its certificate across a Backup and Restore upgrade."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import ESCADM, escadm_ok, free_port

from esc.config import NodeHome
from esc.tls import check_server_files
from esc.upgrade.backup_restore import Runner, _build_new_home
from esc.version import CURRENT


def test_the_new_home_keeps_the_tls_certificate_esc_toml_names(tmp_path: Path) -> None:
    root = tmp_path / "home"
    escadm_ok("init", "--tls", "--api-port", str(free_port()), home=root)
    key = (root / "tls" / "key.pem").read_bytes()
    backup = root / "upgrade" / "before.tar.bz2"
    backup.parent.mkdir()
    escadm_ok("backup", "--file", str(backup), home=root)

    staging, rollback = tmp_path / "home.staging", tmp_path / "home.rollback"
    home = NodeHome(root)
    _build_new_home(home, staging, rollback, backup, ESCADM, ESCADM, CURRENT, Runner(print))

    assert (root / "tls" / "key.pem").read_bytes() == key  # the new home: same certificate
    assert stat.S_IMODE((root / "tls" / "key.pem").stat().st_mode) == 0o600
    check_server_files(*home.tls_files(home.load()))  # what the new node will serve
    assert (rollback / "tls" / "key.pem").read_bytes() == key  # the old node keeps its own
