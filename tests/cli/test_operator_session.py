"""Issue 3 must-shows through the real CLI against a real node: the newcomer's
session from the README, log collect, and stop/start with a transaction in flight."""

from __future__ import annotations

import json
import re
import tarfile
import uuid
from pathlib import Path

import pytest
from conftest import escadm, escadm_ok, free_port, kill_vms, live_vm_processes
from pg_server import PostgresServer

from esc.config import NodeHome
from esc.db.migrate import head_revision

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_newcomer_session(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = escadm_ok("init", "--api-port", str(free_port()), home=home)
    assert "admin password (shown only this once):" in init
    try:
        assert escadm_ok("start", home=home) == "ESC started\n"
        assert escadm_ok("status", home=home) == "ESC status=0 ESC Standalone Healthy\n"
        verbose = escadm_ok("status", "--v", home=home).splitlines()
        assert re.fullmatch(r"escmanager \(pgid \d+\) is running", verbose[0])
        assert re.fullmatch(r"mona \(pgid \d+\) is running", verbose[1])
        assert verbose[2] == "ESC status=0 ESC Standalone Healthy"
        deployed = escadm_ok(
            "deployment", "deploy", str(ROOT / "examples" / "deployment.yaml"), home=home
        )
        assert deployed.rstrip().endswith("DEPLOY demo/web: SUCCESS")
        assert len(live_vm_processes(NodeHome(home))) == 3
        assert escadm_ok("health", home=home) == "ESC HEALTH PASSED\n"
        assert escadm_ok("op_mode", "set", "--mode=maintenance", home=home) == (
            "Set mode to MAINTENANCE\nOperation Mode = MAINTENANCE\n"
        )
        assert escadm_ok("ip_trans", home=home) == "No in-progress transactions\n"
        assert escadm_ok("stop", home=home) == "ESC stopped\n"
        stopped = escadm("status", home=home)
        assert (stopped.returncode, stopped.stdout) == (3, "ESC status=0 ESC is stopped\n")
        assert len(live_vm_processes(NodeHome(home))) == 3  # VMs outlive the controller
    finally:
        escadm("stop", home=home)
        kill_vms(NodeHome(home))


@pytest.mark.slow
def test_log_collect_archive_has_logs_and_no_secret(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    db_password = "Db-" + uuid.uuid4().hex
    name = f"esc_{uuid.uuid4().hex[:10]}"
    url = postgres.create_database(name).replace("postgres@", f"postgres:{db_password}@")
    home = tmp_path / "home"
    init = json.loads(
        escadm_ok("init", "--api-port", str(free_port()), "--db-url", url, "--json", home=home)
    )
    secrets = [
        db_password,
        init["admin_password"],
        (home / "data" / "escadm.credential").read_text().strip(),
    ]
    try:
        escadm_ok("start", home=home)
        escadm_ok("deployment", "deploy", str(ROOT / "examples" / "deployment.yaml"), home=home)
        out_dir = tmp_path / "collected"
        out_dir.mkdir()
        path = Path(escadm_ok("log", "collect", "--dir", str(out_dir), home=home).strip())
        assert re.fullmatch(r"esc_log-\d{14}\.tar\.bz2", path.name)
        assert path.parent == out_dir and (path.stat().st_mode & 0o777) == 0o600
        with tarfile.open(path) as archive:
            members = {
                m.name.split("/", 1)[1]: archive.extractfile(m).read().decode()
                for m in archive.getmembers()
                if m.isfile()
            }
        assert "ESC status=0 ESC Standalone Healthy" in members["status.txt"]
        assert "escmanager (pgid" in members["status.txt"]
        assert members["health.txt"].startswith("ESC HEALTH PASSED")
        assert members["version.txt"].startswith("version : ")
        head = head_revision()
        assert members["schema_revision.txt"] == f"current: {head}\nhead: {head}\n"
        log = members["log/escmanager.log"]
        assert re.search(
            r"\[tid=[0-9a-f-]{36}\]\[cl=NBI\]\[tags=deploy\]\[msg=accepted DEPLOY", log
        )
        assert "[cl=SBI]" in log and "[cl=SM]" in log
        assert "postgres:***@" in members["esc.toml"]
        for member, text in members.items():
            for secret in secrets:
                assert secret not in text, f"a secret leaked into {member}"
    finally:
        escadm("stop", home=home)
        kill_vms(NodeHome(home))
        postgres.drop_database(name)


def test_log_collect_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm_ok("init", home=home)
    result = escadm("log", "collect", "--dir", str(tmp_path / "nope"), home=home)
    assert result.returncode == 2 and "is not a directory" in result.stderr


@pytest.mark.slow
def test_stop_during_a_transaction_then_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm_ok("init", "--api-port", str(free_port()), home=home)
    descriptor = tmp_path / "slow.yaml"
    descriptor.write_text("""
tenant: ops
deployment:
  name: slow
  vm_groups:
    - {name: g, image: "slow-boot:3", flavor: m1.tiny, bootup_time: 30,
       scaling: {min_active: 3, max_active: 3}}
""")
    try:
        escadm_ok("start", home=home)
        accepted = json.loads(
            escadm_ok("deployment", "deploy", str(descriptor), "--no-wait", "--json", home=home)
        )
        assert accepted["transaction_id"] in escadm_ok("ip_trans", home=home)
        assert escadm_ok("stop", home=home) == "ESC stopped\n"
        escadm_ok("start", home=home)
        assert escadm_ok("ip_trans", "--wait", "--timeout", "60", home=home) == (
            "No in-progress transactions\n"
        )
        shown = json.loads(escadm_ok("deployment", "show", "slow", "--json", home=home))
        assert shown["status"] == "ACTIVE"
        vm_ids = {vm["id"] for group in shown["vm_groups"] for vm in group["vms"]}
        running = [
            p.cmdline()[p.cmdline().index("--instance-dir") + 1].rsplit("/", 1)[-1]
            for p in live_vm_processes(NodeHome(home))
        ]
        assert sorted(running) == sorted(vm_ids) and len(vm_ids) == 3  # no orphan, no duplicate
    finally:
        escadm("stop", home=home)
        kill_vms(NodeHome(home))
