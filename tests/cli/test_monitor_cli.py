"""MONA on a real node started with `escadm start`, through the real CLI: the mona
service in status, escadm monitor and escadm script, a VM recovered exactly once
although the node restarts mid-recovery, and the supervisor restarting a killed mona."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import (
    BACKENDS,
    escadm,
    escadm_ok,
    free_port,
    kill_vms,
    live_vm_processes,
    wait_for,
)

from esc.config import NodeHome

MONA_LINE = re.compile(r"mona \(pgid (\d+)\) is running")


@dataclass
class RunningNode:
    home: Path
    port: int
    admin_password: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            auth=("admin", self.admin_password),
            timeout=10,
        )

    def get(self, path: str, **params: object) -> object:
        with self.client() as client:
            response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningNode]:
    """A node created with `escadm init` and started with `escadm start`, on SQLite
    unless the test asks for each backend (indirect parametrization): what the CLI
    shows does not depend on the database, which the API and engine tests run on both;
    what must survive a restart does."""
    databases: list[str] = []
    homes: list[Path] = []
    backend = getattr(request, "param", "sqlite")
    postgres = request.getfixturevalue("postgres") if backend == "postgresql" else None
    try:
        for attempt in range(3):
            # The port free_port() found may be taken before the node binds it (other
            # processes share the machine): then try once more on another one.
            home = tmp_path / f"home{attempt}"
            homes.append(home)
            port = free_port()
            options = ["--api-port", str(port), "--json"]
            if postgres is not None:
                databases.append(f"esc_{uuid.uuid4().hex[:12]}")
                options += ["--db-url", postgres.create_database(databases[-1])]
            init = json.loads(escadm_ok("init", *options, home=home))
            started = escadm("start", home=home)
            if started.returncode == 0:
                assert started.stdout == "ESC started\n"
                break
            assert "already in use" in started.stderr, started.stderr
        else:
            raise AssertionError("no free port for the node in 3 attempts")
        yield RunningNode(home, port, init["admin_password"])
    finally:
        for home in homes:
            escadm("stop", home=home)
            kill_vms(NodeHome(home))
        for database in databases:
            postgres.drop_database(database)


def services(home: Path) -> dict[str, dict]:
    """The services `escadm status --v --json` lists (it exits 1 while one is down)."""
    result = escadm("status", "--v", "--json", home=home)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)["services"]}


# status, monitor, script ---------------------------------------------------------


@pytest.mark.slow
def test_status_lists_mona_and_monitor_start_stop(running: RunningNode) -> None:
    home = running.home
    verbose = escadm_ok("status", "--v", home=home).splitlines()
    assert re.fullmatch(r"escmanager \(pgid \d+\) is running", verbose[0]), verbose
    (mona_pgid,) = [int(m.group(1)) for line in verbose if (m := MONA_LINE.fullmatch(line))]
    assert verbose[-1] == "ESC status=0 ESC Standalone Healthy"
    assert services(home)["mona"]["pgid"] == mona_pgid

    shown = escadm_ok("monitor", "status", home=home).splitlines()
    assert shown[:2] == ["Monitor = RUNNING", f"mona (pgid {mona_pgid}) is running"]
    view = json.loads(escadm_ok("monitor", "status", "--json", home=home))
    assert view["mode"] == "RUNNING" and view["op_mode"] == "OPERATION"
    assert view["service"]["running"] and view["service"]["pgid"] == mona_pgid

    stopped = escadm_ok("monitor", "stop", home=home)
    assert stopped.startswith("Set monitor to STOPPED\nMonitor = STOPPED\n"), stopped
    assert escadm_ok("monitor", "status", home=home).startswith("Monitor = STOPPED\n")
    # MONA itself sees the stop at its next refresh and says it is paused.
    wait_for(
        lambda: "paused: monitoring is stopped" in escadm_ok("monitor", "status", home=home),
        10,
        "mona reports the pause",
    )
    assert json.loads(escadm_ok("monitor", "stop", "--json", home=home))["mode"] == "STOPPED"

    # The stop outlives a restart of the node.
    assert escadm_ok("restart", home=home) == "ESC restarted\n"
    assert escadm_ok("monitor", "status", home=home).startswith("Monitor = STOPPED\n")

    started = escadm_ok("monitor", "start", home=home)
    assert started.startswith("Set monitor to RUNNING\nMonitor = RUNNING\n"), started
    assert MONA_LINE.fullmatch(started.splitlines()[2])
    wait_for(
        lambda: "paused:" not in escadm_ok("monitor", "status", home=home), 10, "mona watches again"
    )


@pytest.mark.slow
def test_script_import_list_show_remove(running: RunningNode, tmp_path: Path) -> None:
    home = running.home
    assert escadm_ok("script", "list", home=home) == "No custom scripts\n"
    content = '#!/bin/sh\n# café ✓\necho "$ESC_VM_ID booted" >> /tmp/booted.log\n\n'
    file = tmp_path / "servicebooted.sh"
    file.write_text(content)

    imported = escadm_ok("script", "import", str(file), "--timeout", "5", home=home)
    size = len(content.encode())
    assert imported == f"script servicebooted.sh stored ({size} bytes, timeout 5 s)\n"
    listed = escadm_ok("script", "list", home=home)
    assert re.fullmatch(rf"servicebooted\.sh +{size} bytes  timeout 5 s\n", listed), listed
    assert escadm_ok("script", "show", "servicebooted.sh", home=home) == content
    shown = json.loads(escadm_ok("script", "show", "servicebooted.sh", "--json", home=home))
    assert (shown["content"], shown["timeout"], shown["size"]) == (content, 5, size)

    # Imported under another name, with the default timeout; a new import replaces it.
    escadm_ok("script", "import", str(file), "--name", "other.sh", home=home)
    assert json.loads(escadm_ok("script", "list", "--json", home=home))[0]["name"] == "other.sh"
    file.write_text("#!/bin/sh\nexit 0")
    escadm_ok("script", "import", str(file), "--name", "other.sh", "--timeout", "60", home=home)
    assert escadm_ok("script", "show", "other.sh", home=home) == "#!/bin/sh\nexit 0"

    assert escadm_ok("script", "remove", "servicebooted.sh", home=home) == (
        "script servicebooted.sh removed\n"
    )
    assert [r["name"] for r in json.loads(escadm_ok("script", "list", "--json", home=home))] == [
        "other.sh"
    ]
    gone = escadm("script", "show", "servicebooted.sh", home=home)
    assert gone.returncode != 0 and "escadm script import" in gone.stderr
    again = escadm("script", "remove", "servicebooted.sh", home=home)
    assert again.returncode != 0 and "servicebooted.sh" in again.stderr


@pytest.mark.slow
def test_bad_scripts_are_refused_with_the_reason(running: RunningNode, tmp_path: Path) -> None:
    home = running.home
    no_interpreter = tmp_path / "plain.sh"
    no_interpreter.write_text("echo hello\n")
    refused = escadm("script", "import", str(no_interpreter), home=home)
    assert refused.returncode != 0
    assert "must start with an interpreter line" in refused.stderr, refused.stderr

    good = tmp_path / "good.sh"
    good.write_text("#!/bin/sh\n")
    for timeout in ("0", "-1", "3601"):
        refused = escadm("script", "import", str(good), "--timeout", timeout, home=home)
        assert refused.returncode != 0 and "timeout" in refused.stderr, refused.stderr
    refused = escadm("script", "import", str(good), "--name", ".hidden", home=home)
    assert refused.returncode != 0 and "name" in refused.stderr, refused.stderr

    binary = tmp_path / "binary"
    binary.write_bytes(b"#!/bin/sh\n\xff\xfe\x00")
    refused = escadm("script", "import", str(binary), home=home)
    assert refused.returncode != 0 and "UTF-8" in refused.stderr, refused.stderr
    missing = escadm("script", "import", str(tmp_path / "nope.sh"), home=home)
    assert missing.returncode != 0 and "nope.sh" in missing.stderr

    assert escadm_ok("script", "list", home=home) == "No custom scripts\n"


@pytest.mark.slow
def test_a_timeout_that_is_not_a_number_is_refused_with_a_message(
    running: RunningNode, tmp_path: Path
) -> None:
    good = tmp_path / "good.sh"
    good.write_text("#!/bin/sh\n")
    for timeout in ("nan", "inf"):
        refused = escadm("script", "import", str(good), "--timeout", timeout, home=running.home)
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr, refused.stderr
        assert "timeout" in refused.stderr, refused.stderr
    assert escadm_ok("script", "list", home=running.home) == "No custom scripts\n"


# recovery across a node restart ----------------------------------------------------

ONCE = """
tenant: ops
deployment:
  name: once
  vm_groups:
    - name: g
      image: "slow-boot:2"
      flavor: m1.tiny
      bootup_time: 30
      recovery_wait_time: 10
      kpis:
        - event_name: VM_ALIVE
          metric_collector: {type: ICMPPing, poll_frequency: 0.5}
          metric_occurrences_true: 1
          metric_occurrences_false: 2
      rules:
        - event_name: VM_ALIVE
          actions: ["FALSE recover autohealing"]
"""


def recover_txs(node: RunningNode) -> list[dict]:
    txs = node.get("/v0/transactions", limit=1000)
    return [t for t in txs if t["operation"] == "VM_RECOVER"]


def vm_processes(home: Path, vm_id: str) -> list:
    return [p for p in live_vm_processes(NodeHome(home)) if vm_id in " ".join(p.cmdline())]


@pytest.mark.slow
@pytest.mark.parametrize("running", BACKENDS, indirect=True)
def test_a_restart_mid_recovery_does_not_recover_twice(
    running: RunningNode, tmp_path: Path
) -> None:
    home = running.home
    file = tmp_path / "once.yaml"
    file.write_text(ONCE)
    deployed = escadm_ok("deployment", "deploy", str(file), home=home)
    assert deployed.rstrip().endswith("DEPLOY ops/once: SUCCESS"), deployed
    shown = json.loads(escadm_ok("deployment", "show", "once", "--json", home=home))
    (vm,) = shown["vm_groups"][0]["vms"]
    wait_for(
        lambda: (
            (node_status := running.get("/esc/monitoring")["status"])
            and node_status["watched_vms"] == 1
        ),
        15,
        "mona watches the VM",
    )

    (proc,) = vm_processes(home, vm["id"])
    os.kill(proc.pid, signal.SIGKILL)
    (tx,) = wait_for(lambda: recover_txs(running), 15, "a VM_RECOVER transaction")
    # The rebooted VM answers only after 2 s: the restart comes while the recovery runs.
    assert tx["automatic"] and tx["state"] in ("QUEUED", "IN_PROGRESS"), tx
    assert escadm_ok("restart", home=home) == "ESC restarted\n"

    wait_for(
        lambda: [t["state"] for t in recover_txs(running)] in (["SUCCESS"], ["FAILED"]),
        60,
        "the recovery ended",
    )
    time.sleep(3)  # MONA refreshes and polls the recovered VM a few times
    (after,) = recover_txs(running)
    assert after["id"] == tx["id"] and after["state"] == "SUCCESS", after
    events = running.get("/v0/events", limit=1000)
    inits = [e for e in events if e["type"] == "VM_RECOVERY_INIT"]
    assert len(inits) == 1 and inits[0]["vm_id"] == vm["id"], inits
    assert len([e for e in events if e["type"] == "VM_RECOVERY_COMPLETE"]) == 1
    assert len(vm_processes(home, vm["id"])) == 1
    again = json.loads(escadm_ok("deployment", "show", "once", "--json", home=home))
    assert again["status"] == "ACTIVE" and again["vm_groups"][0]["vms"][0]["state"] == "ALIVE"
    assert escadm_ok("ip_trans", home=home) == "No in-progress transactions\n"


@pytest.mark.slow
def test_supervisor_restarts_a_killed_mona(running: RunningNode) -> None:
    home = running.home
    before = services(home)["mona"]
    assert before["running"] and before["pid"] == before["pgid"]
    recorded = json.loads((home / "run" / "mona.json").read_text())
    assert recorded["pid"] == before["pid"]
    os.kill(before["pid"], signal.SIGKILL)

    after = wait_for(
        lambda: (s := services(home)["mona"])["running"] and s["pid"] != before["pid"] and s,
        10,
        "a new mona",
    )
    assert after["pgid"] == after["pid"] != before["pgid"]
    shown = escadm_ok("monitor", "status", home=home).splitlines()
    assert shown[:2] == ["Monitor = RUNNING", f"mona (pgid {after['pgid']}) is running"]
    # The new mona reports in its own name.
    wait_for(
        lambda: (
            (status := running.get("/esc/monitoring")["status"]) and status["pid"] == after["pid"]
        ),
        10,
        "the new mona's status",
    )
    assert escadm_ok("status", home=home) == "ESC status=0 ESC Standalone Healthy\n"
