"""Issue 3, must show 2: maintenance mode with a transaction in flight, through the
real CLI against a real node, and the mode surviving a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import escadm, slow_boot_descriptor

from esc.config import NodeHome


def write(tmp_path: Path, name: str, boot: float) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(slow_boot_descriptor(name, boot))
    return str(path)


@pytest.mark.slow
def test_maintenance_with_a_transaction_in_flight(running: Path, tmp_path: Path) -> None:
    shown = escadm("op_mode", "show", home=running)
    assert shown.stdout == "Operation Mode = OPERATION\n"

    # Long enough to be still in flight after the three escadm calls below, each a
    # new Python process, on a loaded machine.
    accepted = json.loads(
        escadm(
            "deployment", "deploy", write(tmp_path, "busy", 12), "--no-wait", "--json", home=running
        ).stdout
    )
    tx_id = accepted["transaction_id"]

    listed = escadm("ip_trans", home=running)
    assert tx_id in listed.stdout and "DEPLOY" in listed.stdout and "ops/busy" in listed.stdout

    refused = escadm("op_mode", "set", "--mode=maintenance", "--ipt_check=true", home=running)
    assert refused.returncode == 1
    assert tx_id in refused.stderr and "in progress" in refused.stderr
    assert escadm("op_mode", "show", home=running).stdout == "Operation Mode = OPERATION\n"

    entered = escadm("op_mode", "set", "--mode=maintenance", home=running)
    assert entered.returncode == 0
    assert entered.stdout == "Set mode to MAINTENANCE\nOperation Mode = MAINTENANCE\n"

    # Sent once: the refusal is what this shows (tests/cli/test_write_retries.py shows
    # escadm waiting MAINTENANCE out for [cli] retry_seconds).
    node = NodeHome(running)
    settings = node.load()
    settings.cli.retry_seconds = 0
    node.save(settings)
    blocked = escadm("deployment", "deploy", write(tmp_path, "new", 0), home=running)
    assert blocked.returncode == 1
    assert "(503)" in blocked.stderr and "temporarily unavailable" in blocked.stderr
    assert escadm("deployment", "list", home=running).returncode == 0  # reads still work

    drained = escadm("ip_trans", "--wait", "--timeout", "60", home=running)
    assert drained.returncode == 0 and drained.stdout == "No in-progress transactions\n"
    tx = json.loads(escadm("deployment", "show", "busy", "--json", home=running).stdout)
    assert tx["status"] == "ACTIVE"  # the in-flight deploy finished SUCCESS

    assert escadm("restart", home=running).returncode == 0
    assert escadm("op_mode", "show", home=running).stdout == "Operation Mode = MAINTENANCE\n"

    back = escadm("op_mode", "set", "--mode=operation", home=running)
    assert back.stdout == "Set mode to OPERATION\nOperation Mode = OPERATION\n"
    assert escadm("deployment", "deploy", write(tmp_path, "new", 0), home=running).returncode == 0


@pytest.mark.slow
def test_ip_trans_wait_times_out(running: Path, tmp_path: Path) -> None:
    escadm("deployment", "deploy", write(tmp_path, "slow", 5), "--no-wait", home=running)
    result = escadm("ip_trans", "--wait", "--timeout", "0.5", home=running)
    assert result.returncode == 4
    assert "still in progress" in result.stderr and "ops/slow" in result.stdout


def test_op_mode_set_rejects_bad_values(tmp_path: Path) -> None:
    home = tmp_path / "home"
    escadm("init", home=home)
    result = escadm("op_mode", "set", "--mode=vacation", home=home)
    assert result.returncode == 2 and "'vacation' is not one of" in result.stderr
