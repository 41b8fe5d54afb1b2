"""Must show 1: the README's run command starts a standalone controller, and
`escadm deployment deploy examples/deployment.yaml` brings three VMs up as live
processes answering their health endpoints; undeploy leaves none behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import escadm, escadm_ok, free_port, kill_vms, live_vm_processes

from esc.config import NodeHome

ROOT = Path(__file__).parents[2]


@pytest.fixture
def standalone(tmp_path: Path):
    """A node created with `escadm init`, run by the README's run command."""
    home = tmp_path / "esc-home"
    port = free_port()
    init = escadm("init", "--api-port", str(port), "--json", home=home, check=True)
    assert json.loads(init.stdout)["admin_password"]
    env = {**os.environ, "ESC_HOME": str(home)}
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "run-standalone")],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "run-standalone.out").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "run-standalone.out").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/esc/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        raise AssertionError("the standalone controller did not become ready")
    yield home
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    kill_vms(NodeHome(home))


@pytest.mark.slow
def test_deploy_example_then_undeploy(standalone: Path) -> None:
    deployed = escadm(
        "deployment",
        "deploy",
        str(ROOT / "examples" / "deployment.yaml"),
        home=standalone,
        check=True,
    )
    assert "DEPLOY demo/web: SUCCESS" in deployed.stdout
    assert "SERVICE_ALIVE" in deployed.stdout
    # Before the controller's log: how to get an admin password.
    said = (standalone.parent / "run-standalone.out").read_text()
    hint = "==> REST API user: admin; to set a new admin password: .venv/bin/escadm passwd"
    assert hint in said and said.index(hint) < said.index("[loglevel=")

    listed = json.loads(escadm_ok("deployment", "list", "--json", home=standalone))
    assert [(d["tenant"], d["name"], d["status"], d["vm_count"]) for d in listed] == [
        ("demo", "web", "ACTIVE", 3)
    ]
    shown = json.loads(escadm_ok("deployment", "show", "web", "--json", home=standalone))
    vms = [vm for group in shown["vm_groups"] for vm in group["vms"]]
    assert len(vms) == 3
    processes = live_vm_processes(NodeHome(standalone))
    assert len(processes) == 3
    for vm in vms:
        assert httpx.get(f"{vm['address']}/health", timeout=2).status_code == 200
    text = escadm_ok("deployment", "show", "web", home=standalone)
    assert "web-lb-0" in text and "ALIVE" in text

    undeployed = escadm("deployment", "undeploy", "web", home=standalone, check=True)
    assert "UNDEPLOY demo/web: SUCCESS" in undeployed.stdout
    assert live_vm_processes(NodeHome(standalone)) == []
    assert escadm_ok("deployment", "list", home=standalone).strip() == "No deployments"


@pytest.mark.slow
def test_cli_errors_are_clear(standalone: Path, tmp_path: Path) -> None:
    missing = escadm("deployment", "deploy", str(tmp_path / "nope.yaml"), home=standalone)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenant: [broken\n")
    refused = escadm("deployment", "deploy", str(bad), home=standalone)
    assert refused.returncode == 1 and "malformed YAML at line 2" in refused.stderr
    unknown = escadm("deployment", "undeploy", "ghost", home=standalone)
    assert unknown.returncode == 1 and "no deployment named 'ghost'" in unknown.stderr


def test_cli_without_a_node(tmp_path: Path) -> None:
    result = escadm("deployment", "list", home=tmp_path / "none")
    assert result.returncode == 2
    assert "escadm init" in result.stderr


def test_cli_with_a_stopped_node(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm("init", "--api-port", str(free_port()), home=home, check=True)
    result = escadm("deployment", "list", home=home)
    assert result.returncode == 3
    assert "does not answer" in result.stderr


def test_init_refuses_an_existing_node_and_bad_values(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm("init", home=home, check=True)
    again = escadm("init", home=home)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = escadm("init", "--db-url", "mysql://x", home=tmp_path / "other")
    assert bad.returncode == 2 and "database.url" in bad.stderr
    assert not (tmp_path / "other" / "esc.toml").exists()


def test_invalid_config_key_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm("init", home=home, check=True)
    config = home / "esc.toml"
    config.write_text(config.read_text() + "\n[api2]\nport = 1\n")
    result = escadm("deployment", "list", home=home)
    assert result.returncode == 2 and "unknown key 'api2'" in result.stderr
