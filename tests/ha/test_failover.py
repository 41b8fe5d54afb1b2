"""An HA pair's failover and switchover under a steady write load through the VIP.

Two network-namespace test hosts run a pair as an operator sets it up (`escadm init
--ha` on both, the pair file, `escadm start`), with the lab's node provider (the host
agent in the root namespace, on the gateway address) to fence a node and keep the
witness record. A client in the root namespace writes through the VIP every 10 ms;
after each fault every acknowledged write must be on the surviving active, and no
write may be acknowledged by the old active once the new one took one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lab import Lab, availability, tcp_probe
from pg_server import availability as pg_availability
from writes import WriteLoad, figures

from esc.ha import keepalived as ka

IN_CI = os.environ.get("CI") == "true"
NET = "198.18.60"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "fo"
ESCADM = str(Path(sys.executable).with_name("escadm"))
N1, N2 = f"{NET}.11", f"{NET}.12"
VIP = f"{NET}.100"
GATEWAY = f"{NET}.1"
AGENT = f"http://{GATEWAY}:7700"
API_PORT = 8080

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


def need(reason: str | None) -> None:
    """Skip outside CI when the lab cannot run here; in CI that is a failure."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def keepalived_missing() -> str | None:
    try:
        ka.find_keepalived()
    except ka.KeepalivedError as exc:
        return str(exc)
    return None


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@dataclass
class Node:
    name: str
    ns: str
    address: str
    home: Path


class Pair:
    def __init__(self, lab: Lab, base: Path) -> None:
        self.lab = lab
        self.base = base
        self.nodes = [
            Node("n1", lab.hosts[0].ns, N1, base / "n1"),
            Node("n2", lab.hosts[1].ns, N2, base / "n2"),
        ]
        self.token = base / "provider.token"
        self.agent: subprocess.Popen | None = None
        self.password = ""

    # commands ------------------------------------------------------------------------

    def escadm(self, node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.lab.run(
            node.ns, [ESCADM, *args, "--home", str(node.home)], check=False, timeout=timeout
        )

    def ok(self, node: Node, *args: str, timeout: float = 120) -> str:
        result = self.escadm(node, *args, timeout=timeout)
        assert result.returncode == 0, (
            f"escadm {' '.join(args)} on {node.name} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}\n{self.logs()}"
        )
        return result.stdout

    def init_args(self, name: str) -> list[str]:
        return [
            "init",
            "--ha",
            "--ha-node-list",
            f"{N1},{N2}",
            "--kad-vip",
            f"{VIP}/24",
            "--kad-vif",
            "eth0",
            "--gateway-ip",
            GATEWAY,
            "--kad-vri",
            "66",
            "--api-port",
            str(API_PORT),
            "--ha-provider",
            "lab",
            "--ha-provider-url",
            AGENT,
            "--ha-provider-token-file",
            str(self.token),
            "--node-name",
            name,
        ]

    # set-up --------------------------------------------------------------------------

    def start_agent(self) -> None:
        self.token.write_text("lab-agent-token-for-the-failover-tests\n")
        self.token.chmod(0o600)
        command = [sys.executable, "-m", "esc.ha.labhost", "--listen", f"{GATEWAY}:7700"]
        for node in self.nodes:
            command += ["--node", f"{node.address}={node.ns}"]
        command += ["--state", str(self.base / "provider.json"), "--token-file", str(self.token)]
        log = (self.base / "labhost.log").open("w")
        self.agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: tcp_probe(GATEWAY, 7700, 0.2) == "open", 15, "the lab agent listens")

    def create(self) -> None:
        first, second = self.nodes
        created = json.loads(self.ok(first, *self.init_args("n1"), "--json"))
        self.password = created["admin_password"]
        pair_file = self.base / "pair.json"
        pair_file.write_bytes(Path(created["pair_files"][0]).read_bytes())
        pair_file.chmod(0o600)
        self.ok(second, *self.init_args("n2"), "--ha-pair-file", str(pair_file))
        self.ok(first, "start")
        self.ok(second, "start")
        self.wait_pair(active=first)

    def wait_pair(self, active: Node, timeout: float = 90) -> None:
        standby = self.other(active)
        wait_for(
            lambda: self.status(active) == "ESC status=0 ESC HA Active Healthy",
            timeout,
            f"{active.name} active: {self.status(active)}\n{self.logs()}",
        )
        self.ok(standby, "replication", "status", "--wait-uptodate", "--timeout", str(timeout))
        wait_for(
            lambda: self.status(standby) == "ESC status=0 ESC HA Standby Healthy",
            timeout,
            f"{standby.name} standby: {self.status(standby)}\n{self.logs()}",
        )

    def status(self, node: Node) -> str:
        return self.escadm(node, "status", timeout=30).stdout.strip()

    def other(self, node: Node) -> Node:
        return self.nodes[1] if node is self.nodes[0] else self.nodes[0]

    def active(self) -> Node:
        for node in self.nodes:
            if self.status(node).startswith("ESC status=0 ESC HA Active"):
                return node
        raise AssertionError(f"no active node:\n{self.logs()}")

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://{VIP}:{API_PORT}",
            auth=("admin", self.password),
            timeout=10,
            trust_env=False,
        )

    def tenants(self) -> set[str]:
        with self.client() as client:
            response = client.get("/v0/tenants")
            response.raise_for_status()
            return {t["name"] for t in response.json()}

    def power_on_and_start(self, node: Node) -> None:
        """Bring back a node the new active fenced, as after a reboot, and start it."""
        with httpx.Client(trust_env=False, timeout=10) as agent:
            headers = {"Authorization": f"Bearer {self.token.read_text().strip()}"}
            agent.post(f"{AGENT}/v1/nodes/{node.address}/power-on", headers=headers)
        self.lab.host_up(node.ns)
        self.ok(node, "start", timeout=180)

    def logs(self) -> str:
        out = []
        for node in self.nodes:
            for name in ("escmanager.log", "pgsql.out", "supervisor.log"):
                path = node.home / "log" / name
                if path.exists():
                    tail = "\n".join(path.read_text().splitlines()[-25:])
                    out.append(f"--- {node.name} {name}\n{tail}")
        return "\n".join(out)

    def stop(self) -> None:
        for node in self.nodes:
            self.escadm(node, "stop", timeout=120)
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait(10)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    need(availability())
    need(pg_availability())
    need(keepalived_missing())
    base = Path(tempfile.mkdtemp(prefix="fo-"))
    base.chmod(0o711)  # postgres goes through it to the homes
    with Lab(2, net=f"{NET}.0/24", prefix=PREFIX) as lab:
        made = Pair(lab, base)
        try:
            made.start_agent()
            made.create()
            yield made
        finally:
            made.stop()
    if not os.environ.get("FO_KEEP"):
        shutil.rmtree(base, ignore_errors=True)


def _under_load(pair: Pair, fault, label: str) -> dict:
    load = WriteLoad(f"http://{VIP}:{API_PORT}", ("admin", pair.password), prefix=label)
    load.start()
    try:
        load.wait_acks(30, 30)
        time.sleep(random.uniform(0, 1.0))
        fault_at = time.time()
        fault()
        wait_for(
            lambda: any(a.acked > fault_at and a.node != load.acks[0].node for a in load.acks),
            30,
            f"a write acknowledged by the other node after {label}\n{pair.logs()}",
        )
        time.sleep(1.0)
    finally:
        load.stop()
    result = figures(load, fault_at, pair.tenants())
    print(f"\n{label}: {json.dumps(result.as_json())}")
    assert result.lost == [], f"acknowledged writes lost: {result.lost[:10]}"
    assert result.overlap == [], "the old active acknowledged writes after the new one did"
    return result.as_json()


def test_the_active_host_dies_and_the_standby_takes_over_without_losing_a_write(
    pair: Pair,
) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.lab.host_down(old.ns), "host-down")
    assert result["old_primary"] == old.name and result["new_primary"] == new.name
    assert result["failover_s"] < 5, result
    assert pair.status(new) == "ESC status=0 ESC HA Active Healthy"

    # The old active comes back (it was fenced): it rejoins as the standby by itself.
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_a_planned_switchover_loses_no_write(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.ok(old, "switchover"), "switchover")
    assert result["new_primary"] == new.name
    pair.wait_pair(active=new)
