"""The supervisor backs off a dying service, records when it gives one up, and
`escadm status` / `escadm start` say so and bring it back, on a real node."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from conftest import escadm

from esc.config import NodeHome
from esc.node.control import live_record
from esc.node.processes import read_given_up
from esc.node.supervisor import RESTART_POLICY, RestartPolicy


def test_restart_delay_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def _squat(port: int, timeout: float = 15) -> socket.socket:
    """Listen on `port` once the killed escmanager's socket is gone (the kernel may
    take a moment on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", port))
        except OSError:
            squatter.close()
            if time.monotonic() > deadline:
                holders = [c for c in psutil.net_connections() if c.laddr and c.laddr.port == port]
                raise AssertionError(f"port {port} still held: {holders}") from None
            time.sleep(0.1)
            continue
        squatter.listen()
        return squatter


@pytest.mark.slow
def test_a_service_that_keeps_dying_is_backed_off_given_up_and_started_again(home: Path) -> None:
    assert escadm("start", home=home).returncode == 0
    node = NodeHome(home)
    port = int(re.search(r"port = (\d+)", (home / "esc.toml").read_text()).group(1))
    supervisor = live_record(node, "supervisor")
    escmanager = live_record(node, "escmanager")
    # With the supervisor paused, escmanager dies and its port is taken: every
    # restart then exits at once ("port … already in use").
    os.kill(supervisor.pid, signal.SIGSTOP)
    try:
        os.killpg(escmanager.pgid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while escmanager.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        squatter = _squat(port)
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    try:
        deadline = time.monotonic() + 90
        while read_given_up(node.run, "escmanager") is None and time.monotonic() < deadline:
            time.sleep(0.3)
        given_up = read_given_up(node.run, "escmanager")
        assert given_up is not None, "the supervisor did not record giving escmanager up"
        deaths = given_up.deaths
        assert len(deaths) == RESTART_POLICY.deaths_allowed
        assert deaths[0].how == "killed by SIGKILL"
        assert {d.how for d in deaths[1:]} == {"exit code 1"}
        # The wait between a death and the next start doubles.
        at = [datetime.fromisoformat(d.at).timestamp() for d in deaths]
        waits = [at[i + 1] - deaths[i + 1].ran_s - at[i] for i in range(len(deaths) - 1)]
        for n, wait in enumerate(waits, start=1):
            assert wait >= RESTART_POLICY.delay(n) - 0.05, waits
        assert waits == sorted(waits) and waits[-1] > 2 * waits[0], waits
        assert "cannot start: port" in (home / "log" / "escmanager.log").read_text()

        status = escadm("status", home=home)
        assert status.returncode == 1
        lines = status.stdout.splitlines()
        assert lines[-1] == "ESC status=1 ESC Standalone Unhealthy"
        assert lines[0].startswith("escmanager was given up by the supervisor at ")
        assert re.search(r"it died 5 times in \d+ s \(killed by SIGKILL, exit code 1", lines[0])
        assert "then escadm start" in lines[0]
        verbose = escadm("status", "--v", home=home)
        assert verbose.returncode == 1
        assert verbose.stdout.splitlines()[0].startswith("escmanager was given up")
        assert re.fullmatch(r"mona \(pgid \d+\) is running", verbose.stdout.splitlines()[1])
        as_json = json.loads(escadm("status", "--json", home=home).stdout)
        assert as_json["given_up"] == ["escmanager"] and not as_json["healthy"]
        recorded = as_json["services"][0]["given_up"]
        assert recorded["name"] == "escmanager" and len(recorded["deaths"]) == 5
        assert recorded["deaths"][0]["how"] == "killed by SIGKILL"

        # The cause is still there: start tries, and says it was given up again.
        again = escadm("start", home=home)
        assert again.returncode == 1, again.stdout
        assert "started again, but escmanager was given up by the supervisor" in again.stderr
        assert "exit code 1, exit code 1" in again.stderr
    finally:
        squatter.close()

    # The cause is gone: start asks the running supervisor to start escmanager again.
    started = escadm("start", home=home)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith(
        "ESC was running with escmanager stopped; started escmanager (it had been given up: "
        "it died 5 times"
    )
    assert live_record(node, "supervisor").pid == supervisor.pid
    assert escadm("status", home=home).stdout == "ESC status=0 ESC Standalone Healthy\n"
    assert read_given_up(node.run, "escmanager") is None
    assert escadm("start", home=home).stdout == "ESC is already running\n"
