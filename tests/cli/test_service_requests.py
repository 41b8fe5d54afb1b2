"""Asking the running supervisor to restart, stop and start one service: a planned
restart is no death, a stopped service stays stopped until started, on a real node."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import escadm

from esc.config import NodeHome
from esc.node.control import live_record
from esc.node.processes import held_path, read_given_up
from esc.node.service_requests import (
    ServiceRequestError,
    request_restart,
    request_start,
    request_stop,
)


def _services(home: Path) -> dict[str, dict]:
    status = json.loads(escadm("status", "--json", home=home).stdout)
    return {s["name"]: s for s in status["services"]}


def test_a_requested_restart_is_not_a_death_and_a_stop_holds_until_started(
    home: Path,
) -> None:
    node = NodeHome(home)
    with pytest.raises(ServiceRequestError, match="not running under its supervisor"):
        request_restart(node, "mona")
    assert escadm("start", home=home).returncode == 0
    with pytest.raises(ServiceRequestError, match="no service 'monitor'"):
        request_restart(node, "monitor")
    before = live_record(node, "mona")

    # Restarted five times in a row, more than the deaths that give a service up.
    for _ in range(5):
        record = request_restart(node, "mona")
        assert record.pid != before.pid
        before = record
    assert read_given_up(node.run, "mona") is None
    log = (home / "log" / "supervisor.log").read_text()
    # Exit 0, or -15 when SIGTERM came before mona had set up its handler: either way
    # asked for, so no death.
    assert len(re.findall(r"mona stopped \(exit (0|-15)\) for its requested restart", log)) == 5
    assert "restarting it in" not in log  # no restart with a back-off: no death

    assert request_stop(node, "mona") is True
    assert held_path(node.run, "mona").exists()
    status = escadm("status", "--v", home=home)
    assert status.returncode == 1
    assert "mona is stopped" in status.stdout
    assert _services(home)["mona"]["held"] is True
    assert request_stop(node, "mona") is False  # already stopped: nothing to do

    assert request_start(node, "mona") is True
    assert not held_path(node.run, "mona").exists()
    assert _services(home)["mona"]["running"] is True
    assert escadm("status", home=home).stdout.strip() == "ESC status=0 ESC Standalone Healthy"
