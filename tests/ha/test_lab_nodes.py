"""The lab provider's own nodes: the host agent deploys an ESC node from a kept release
wheel into a network namespace of its own (esc.ha.labnodes), its first boot making it
from its day-0 (escadm init, escadm start); fence, power-on, delete and a redeploy
alike, driven through the lab provider as `escadm node --provider local` drives it.

Root needed (namespaces, veths); in 198.18.72.0/24. Measured figures are printed (run
with -s): a deploy is a venv with the wheel (1.1 s on an idle 2-core machine, 5 s on a
loaded one) and a first boot (escadm init and start: 5 s idle, 20 s loaded); the
module takes 20 s idle, 90 s loaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lab import Lab, availability, tcp_probe
from needs import need

from esc.ha.labnodes import veth_name
from esc.ha.provider import NodeSpec, PermanentProviderError
from esc.ha.providers.lab import LabProvider
from esc.vim.base import InstanceState

ROOT = Path(__file__).parents[2]
RELEASES = ROOT / "releases"
NET = "198.18.72"
GATEWAY = f"{NET}.1"
AGENT_URL = f"http://{GATEWAY}:7703"
IMAGE = "esc-1.2.0.1"
NODE_IP = f"{NET}.21"
SPEC = NodeSpec(name="nd-a", image=IMAGE, ip=f"{NODE_IP}/24", gateway_ip=GATEWAY)
API = f"http://{NODE_IP}:8080"
DEPLOY_BOUND = 240.0  # seconds, one deploy; measured 6.7 idle, 19 to 35 on a loaded machine
BOOT_BOUND = 120.0


class Agent:
    """The lab's host agent in the root namespace, deploying onto the lab's bridge."""

    def __init__(self, lab: Lab) -> None:
        assert lab.dir is not None
        self.dir = lab.dir
        self.token = lab.dir / "agent.token"
        self.token.write_text("lab-nodes-token-of-the-deploy-tests\n")
        self.token.chmod(0o600)
        self.nodes = lab.dir / "nodes"
        self.log = lab.dir / "agent.log"
        self.bridge = lab.bridge
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "esc.ha.labhost", "--listen", AGENT_URL[7:]]
        command += ["--state", str(self.dir / "agent-state.json"), "--token-file", str(self.token)]
        command += ["--bridge", self.bridge, "--nodes-dir", str(self.nodes)]
        command += ["--releases", str(RELEASES)]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self.log.open("ab"), text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the agent did not start: {self.log.read_text()[-2000:]}"
        assert json.loads(line)["url"] == AGENT_URL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need(availability())
    with Lab(1, net=f"{NET}.0/24", prefix="nd") as built:
        assert built.dir is not None
        built.dir.chmod(0o711)
        yield built
        # What a failed test may have left of the nodes it deployed.
        for name in ("nd-a", "nd-b"):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "link", "del", veth_name(name)], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def agent(lab: Lab) -> Iterator[Agent]:
    running = Agent(lab)
    running.start()
    yield running
    running.stop()
    assert "lab-nodes-token" not in running.log.read_text()


@pytest.fixture
def provider(agent: Agent) -> Iterator[LabProvider]:
    provider = LabProvider(AGENT_URL, agent.token)
    yield provider
    provider.close()


def health(timeout: float = 1.0) -> int | None:
    try:
        return httpx.get(f"{API}/esc/health", timeout=timeout, trust_env=False).status_code
    except httpx.TransportError:
        return None


def wait_healthy(bound: float) -> float:
    started = time.monotonic()
    while health() != 200:
        assert time.monotonic() - started < bound, f"{API} not healthy within {bound} s"
        time.sleep(0.2)
    return time.monotonic() - started


def deploy(provider: LabProvider, agent: Agent) -> str:
    """Deploy SPEC; how long it took, and each step of it as the agent logged them."""
    started = time.monotonic()
    status = provider.deploy(SPEC)
    seconds = time.monotonic() - started
    assert status.state is InstanceState.RUNNING, status
    assert seconds < DEPLOY_BOUND
    (steps,) = [line for line in agent.log.read_text().splitlines() if " made: " in line][-1:]
    return f"{seconds:.1f} s ({steps.split(' made: ')[1]})"


def node_python(agent: Agent, *code: str) -> str:
    """Python run with the node's own venv inside its namespace, as its services run
    (-P: not from the working directory)."""
    python = agent.nodes / SPEC.name / "venv" / "bin" / "python"
    command = ["ip", "netns", "exec", SPEC.name, str(python), "-P", "-c", *code]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd="/")
    return done.stdout.strip()


def test_a_node_is_deployed_from_a_release_fenced_powered_on_deleted_and_redeployed(
    lab: Lab, agent: Agent, provider: LabProvider
) -> None:
    first = deploy(provider, agent)
    # Its first boot made it from its day-0, and started it: its API answers on its
    # address, from the root namespace, as the release of its image.
    healthy = wait_healthy(BOOT_BOUND)
    home = agent.nodes / SPEC.name / "home"
    created = json.loads((home / "data" / "first-boot.json").read_text())
    assert (home / "data" / "first-boot.json").stat().st_mode & 0o777 == 0o600
    version = httpx.get(
        f"{API}/esc/version", auth=("admin", created["admin_password"]), trust_env=False
    ).json()
    assert version["full"] == "1.2.0.1"
    venv = str(agent.nodes / SPEC.name / "venv")
    where = node_python(agent, "import esc; print(esc.__file__)")
    assert where.startswith(venv), where
    # Its services run the release's code from its venv: the supervisor, escmanager, mona.
    pids = subprocess.run(["ip", "netns", "pids", "nd-a"], capture_output=True, text=True)
    commands = [
        Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in pids.stdout.split()
    ]
    assert any(b"esc.node.supervisor" in c for c in commands), commands
    assert all(c[0].decode().startswith(venv) for c in commands if b"-m" in c), commands
    settings = (home / "esc.toml").read_text()
    assert 'name = "nd-a"' in settings and 'host = "0.0.0.0"' in settings
    shown = provider.show("nd-a")
    assert (shown.state, shown.ip, shown.image) == (InstanceState.RUNNING, NODE_IP, IMAGE)
    assert shown.parameters["gateway_ip"] == GATEWAY
    assert provider.deploy(SPEC) == shown  # asked again: left as it is
    print(f"\ndeploy {first}, its API healthy {healthy:.1f} s after")

    # The agent restarted: it still has the node, as its state file says.
    agent.stop()
    agent.start()
    assert [n.name for n in provider.nodes()] == ["nd-a"]

    # Fenced: cut off, nothing of it left running; fencing it again is no error.
    provider.fence(NODE_IP)
    assert tcp_probe(NODE_IP, 8080) == "silent"
    assert subprocess.run(["ip", "netns", "pids", "nd-a"], capture_output=True).stdout == b""
    assert provider.show("nd-a").state is InstanceState.STOPPED
    provider.fence("nd-a")

    # Powered on, it boots as a VM does: its services start again, the node as it was.
    provider.power_on("nd-a")
    rebooted = wait_healthy(BOOT_BOUND)
    assert provider.show("nd-a").state is InstanceState.RUNNING
    again = json.loads((home / "data" / "first-boot.json").read_text())
    assert again == created  # not made again
    print(f"power-on to healthy {rebooted:.1f} s")

    provider.delete("nd-a")
    assert tcp_probe(NODE_IP, 8080) == "silent"
    assert (
        "nd-a" not in subprocess.run(["ip", "netns", "list"], capture_output=True).stdout.decode()
    )
    assert not (agent.nodes / "nd-a").exists()
    with pytest.raises(PermanentProviderError, match="no node nd-a at this provider"):
        provider.show("nd-a")

    # Deployed again alike: the same name and address, a new node of the same release.
    second = deploy(provider, agent)
    wait_healthy(BOOT_BOUND)
    assert provider.show(NODE_IP).name == "nd-a"
    renewed = json.loads((home / "data" / "first-boot.json").read_text())
    assert renewed["admin_password"] != created["admin_password"]
    print(f"redeploy {second}")
    provider.delete("nd-a")


def test_what_the_lab_cannot_give_a_node_is_refused_before_anything_is_made(
    agent: Agent, provider: LabProvider
) -> None:
    for changes, message in (
        ({"image": "esc-9.9.9.9"}, r"unknown image 'esc-9.9.9.9'; the lab's images are esc-1"),
        ({"ip": "198.18.73.5/24"}, rf"a lab node's address is in {NET}.0/24"),
        ({"ip": f"{GATEWAY}/24"}, "other than the bridge's own"),
        ({"floating_ip": "198.19.72.5"}, "the lab has no floating IPs"),
        ({"flavor": "m1.tiny"}, "the lab's nodes have no flavor"),
        ({"network": "mgmt"}, "unknown network 'mgmt'; the lab's network is ndbr"),
        ({"name": "a-name-too-long-for-a-namespace"}, "use 2 to 15 lowercase"),
    ):
        with pytest.raises(PermanentProviderError, match=message):
            provider.deploy(NodeSpec(**{**vars(SPEC), "name": "nd-b", **changes}))
    assert provider.nodes() == []
    assert not (agent.nodes / "nd-b").exists()
    with pytest.raises(PermanentProviderError, match="no node nd-b at this provider"):
        provider.delete("nd-b")
