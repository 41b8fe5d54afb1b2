"""The node provider: the lab's host agent (esc.ha.labhost) in the root namespace, and
the lab provider driver called from inside the nodes' namespaces, as nodes call it.

Measured figures are printed (run with -s to see them) and bounded generously.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esc.config import HaSettings
from esc.ha import labhost
from esc.ha.provider import PermanentProviderError, load_provider
from esc.ha.providers.lab import LabProvider

sys.path.insert(0, str(Path(__file__).parent))
from lab import Lab, availability
from needs import need

NET = "198.18.40"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "pv"
GATEWAY = f"{NET}.1"
AGENT_PORT = 7701
AGENT_URL = f"http://{GATEWAY}:{AGENT_PORT}"
NODE = {"pv1": f"{NET}.11", "pv2": f"{NET}.12"}
VIP = f"{NET}.100"
BANNER_PORT = 7102
TOKEN = "5f0c6a1e9b2d4c7a8e3f1029384756abcdef0123456789fedcba9876543210aa"
WRONG_TOKEN = "0" * 64
CLIENT = str(Path(__file__).with_name("provider_client.py"))
FENCE_BOUND = 1.0  # seconds, a fence as the calling node sees it; measured: about 0.02
REFUSED_BOUND = 0.5  # the agent is down: its host answers with a reset at once
CONNECT_BOUND = 2.0  # the agent's host is silent: the 1 s connect bound, plus slack


def write_token(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


class Agent:
    """`python -m esc.ha.labhost` in the root namespace, as the lab's host runs it."""

    def __init__(self, directory: Path) -> None:
        self.state = directory / "provider-state.json"
        self.token_file = write_token(directory / "provider.token")
        self.log = directory / "labhost.log"
        self.proc: subprocess.Popen | None = None

    def command(self, token_file: Path | None = None) -> list[str]:
        command = [sys.executable, "-m", "esc.ha.labhost", "--listen", f"{GATEWAY}:{AGENT_PORT}"]
        for ns, address in NODE.items():
            command += ["--node", f"{address}={ns}"]
        return [
            *command,
            "--state",
            str(self.state),
            "--token-file",
            str(token_file or self.token_file),
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        assert line, f"the agent did not start: {self.log.read_text()[-2000:]}"
        assert json.loads(line)["url"] == AGENT_URL

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("the agent did not stop on SIGTERM within 10 s") from None

    def restart(self) -> None:
        self.stop()
        self.start()


class Node:
    """The node's side: one provider_client.py process inside the lab host."""

    def __init__(self, lab: Lab, ns: str, home: Path, token_file: Path) -> None:
        home.mkdir(exist_ok=True)
        self.ns = ns
        self.proc = lab.popen(
            ns,
            [sys.executable, CLIENT, str(home), AGENT_URL, str(token_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, op: str, **arguments: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 20) -> dict[str, Any] | None:
        """The answer to the last request; None when the client died without one."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        self.send(op, **arguments)
        reply = self.receive()
        assert reply, f"the client in {self.ns} did not answer {op} (exit {self.proc.poll()})"
        return reply

    def ok(self, op: str, **arguments: Any) -> Any:
        reply = self.call(op, **arguments)
        assert reply["ok"], f"{op} {arguments} from {self.ns}: {reply}"
        return reply["result"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


def link_state(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "eth0"], capture_output=True)
    return json.loads(out.stdout)[0]["operstate"]


def addresses(ns: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", "eth0"], capture_output=True
    )
    return [
        f"{a['local']}/{a['prefixlen']}" for e in json.loads(out.stdout) for a in e["addr_info"]
    ]


def default_route(ns: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", ns, "-j", "route", "show", "default"], capture_output=True)
    return json.loads(out.stdout or "[]")


def agent_fence_seconds(agent: Agent) -> float:
    """The time the agent's last fence took, from its log line."""
    lines = [line for line in agent.log.read_text().splitlines() if " fenced " in line]
    assert lines, "the agent logged no fence"
    return float(lines[-1].rsplit(" in ", 1)[1].removesuffix(" s"))


def killed_by_sigkill(pid: int) -> bool:
    """Reap `pid`, a child of this process (or an orphan this process is the subreaper
    of), and tell whether SIGKILL ended it."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need(availability())
    with Lab(2, net=f"{NET}.0/24", prefix=PREFIX) as built:
        yield built


@pytest.fixture(scope="module")
def agent_process(lab: Lab) -> Iterator[Agent]:
    assert lab.dir is not None
    agent = Agent(lab.dir)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        assert "Bearer" not in agent.log.read_text()
        assert TOKEN not in agent.log.read_text()


@pytest.fixture
def agent(agent_process: Agent) -> Agent:
    """The agent, running."""
    if not agent_process.running():
        agent_process.start()
    return agent_process


@pytest.fixture(scope="module")
def clients(lab: Lab, agent_process: Agent) -> Iterator[dict[str, Node]]:
    """Each node's client, kept across tests (a fence kills the fenced node's)."""
    running: dict[str, Node] = {}
    try:
        yield running
    finally:
        for node in running.values():
            node.close()


@pytest.fixture
def nodes(lab: Lab, agent: Agent, clients: dict[str, Node]) -> Iterator[dict[str, Node]]:
    """Both nodes powered on and unmarked, each with its client running."""
    assert lab.dir is not None
    for ns in NODE:
        if ns not in clients or clients[ns].proc.poll() is not None:
            clients[ns] = Node(lab, ns, lab.dir / f"home-{ns}", agent.token_file)
            # Loaded and connected, as on a running node: a call's time is the provider's.
            assert clients[ns].ok("check") is None
    try:
        yield clients
    finally:
        # Leave both nodes powered on and unmarked, as the next test expects them.
        provider = LabProvider(AGENT_URL, agent.token_file)
        try:
            for address in NODE.values():
                if agent.running() and provider.status(address)["power"] == "off":
                    provider.power_on(address)
                if agent.running():
                    provider.clear_outdated(address)
        finally:
            provider.close()


# ---------------------------------------------------------------- fencing
@pytest.mark.parametrize(("fencer", "victim"), [("pv1", "pv2"), ("pv2", "pv1")])
def test_fence_cuts_the_node_off_and_kills_everything_in_it(
    lab: Lab, agent: Agent, nodes: dict[str, Node], fencer: str, victim: str
) -> None:
    address = NODE[victim]
    sleeper = lab.popen(victim, ["sleep", "300"])
    banner = lab.serve_banner(victim, BANNER_PORT)
    # A daemon: its parent has exited, so it is an orphan (this process is its subreaper).
    spawned = lab.run(victim, ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
    orphan = int(spawned.stdout)
    subprocess.run(["ip", "-n", victim, "addr", "add", f"{VIP}/24", "dev", "eth0"], check=True)
    in_victim = set(lab.pids(victim))
    assert {sleeper.pid, banner.pid, orphan, nodes[victim].proc.pid} <= in_victim
    assert lab.probe(fencer, address, BANNER_PORT) == "open"

    reply = nodes[fencer].call("fence", address=address)
    assert reply["ok"], reply
    agent_side = agent_fence_seconds(agent)
    print(
        f"\nfence of {victim} from {fencer}: {reply['seconds']:.3f} s as the node sees it, "
        f"{agent_side:.3f} s in the agent"
    )
    assert reply["seconds"] < FENCE_BOUND

    # Returned only once it holds: cut off, and nothing of it left running.
    assert link_state(victim) == "DOWN"
    assert lab.pids(victim) == []
    assert killed_by_sigkill(sleeper.pid)
    assert killed_by_sigkill(banner.pid)
    assert killed_by_sigkill(nodes[victim].proc.pid)
    assert killed_by_sigkill(orphan)
    assert lab.probe(fencer, address, BANNER_PORT) == "silent"
    assert lab.probe(victim, "127.0.0.1", BANNER_PORT) == "refused"  # its listener is gone
    status = nodes[fencer].ok("status", node=address)
    assert status["power"] == "off"
    assert status["links"] == {"eth0": "DOWN"}

    # Fencing a fenced node fences it again, and says so.
    by_hand = lab.popen(victim, ["sleep", "300"])  # started by hand while it was off
    # `ip netns exec` enters the namespace, then execs: wait until it is in, or the
    # fence could look before it is there.
    deadline = time.monotonic() + 5
    while by_hand.pid not in lab.pids(victim):
        assert time.monotonic() < deadline, "the sleeper never entered the namespace"
        time.sleep(0.01)
    again = nodes[fencer].call("fence", address=address)
    assert again["ok"], again
    assert lab.pids(victim) == []
    assert again["seconds"] < FENCE_BOUND
    assert nodes[fencer].ok("status", node=address)["power"] == "off"

    # Powered on as after a reboot: its own address only (the VIP is gone), routed again.
    nodes[fencer].ok("power_on", node=address)
    assert link_state(victim) == "UP"
    assert addresses(victim) == [f"{address}/24"]
    assert default_route(victim)[0]["gateway"] == GATEWAY
    assert lab.probe(fencer, address, BANNER_PORT) == "refused"  # reachable, nothing runs
    assert lab.pids(victim) == []
    assert nodes[fencer].ok("status", node=address)["power"] == "on"


def test_power_off_lets_processes_stop_before_it_kills(lab: Lab, nodes: dict[str, Node]) -> None:
    trap = "trap 'echo stopped > {0}; exit 0' TERM; sleep 300 & wait"
    assert lab.dir is not None
    marker = lab.dir / "stopped-cleanly"
    polite = lab.popen("pv2", ["sh", "-c", trap.format(marker)])
    stubborn = lab.popen("pv2", ["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    time.sleep(0.2)  # the shells set their traps
    nodes["pv1"].ok("power_off", node=NODE["pv2"], grace=0.5)
    assert polite.wait(2) == 0
    assert marker.read_text().strip() == "stopped"
    assert stubborn.wait(2) == -signal.SIGKILL
    assert lab.pids("pv2") == []
    assert link_state("pv2") == "DOWN"


def test_of_two_nodes_fencing_each_other_at_once_one_survives(
    agent: Agent, nodes: dict[str, Node]
) -> None:
    # Both requests are in the agent's sockets before it reads either: a split pair's
    # nodes asking at the same moment, without a race in the test.
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        nodes["pv1"].send("fence", address=NODE["pv2"])
        nodes["pv2"].send("fence", address=NODE["pv1"])
        time.sleep(0.3)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    # The loser's client is killed (its output ends), the survivor's answers.
    replies = {ns: node.receive() for ns, node in nodes.items()}
    deadline = time.monotonic() + 5
    while agent.log.read_text().count("/fence from ") < 2:  # both handled
        assert time.monotonic() < deadline, agent.log.read_text()[-1000:]
        time.sleep(0.02)
    states = {ns: link_state(ns) for ns in NODE}
    assert sorted(states.values()) == ["DOWN", "UP"], (states, replies)
    survivor = next(ns for ns, state in states.items() if state == "UP")
    loser = next(ns for ns in NODE if ns != survivor)
    assert replies[survivor] is not None and replies[survivor]["ok"] is True, replies
    assert replies[loser] is None
    assert killed_by_sigkill(nodes[loser].proc.pid)
    log = agent.log.read_text()
    assert f"refused to fence {NODE[survivor]} for {NODE[loser]}, itself fenced" in log


def test_a_node_does_not_fence_itself(nodes: dict[str, Node]) -> None:
    reply = nodes["pv1"].call("fence", address=NODE["pv1"])
    assert reply["kind"] == "PermanentProviderError"
    assert "asked to fence itself" in reply["error"]
    assert link_state("pv1") == "UP"


# ---------------------------------------------------------------- the witness record
def test_the_witness_record_is_shared_and_survives_a_restart_of_the_agent(
    agent: Agent, nodes: dict[str, Node]
) -> None:
    active, standby = nodes["pv1"], nodes["pv2"]
    assert active.ok("outdated", address=NODE["pv2"]) is None
    reason = "standby lost at 0/3000060: the active commits without it"
    active.ok("mark_outdated", address=NODE["pv2"], reason=reason)
    assert standby.ok("outdated", address=NODE["pv2"]) == reason
    assert active.ok("outdated", address=NODE["pv1"]) is None

    agent.restart()
    assert standby.ok("outdated", address=NODE["pv2"]) == reason
    assert active.ok("outdated", address=NODE["pv2"]) == reason
    record = json.loads(agent.state.read_text())["nodes"][NODE["pv2"]]["outdated"]
    assert record["reason"] == reason
    assert record["by"] == NODE["pv1"]
    assert agent.state.stat().st_mode & 0o777 == 0o600

    active.ok("clear_outdated", address=NODE["pv2"])
    active.ok("clear_outdated", address=NODE["pv2"])  # a clear mark: nothing to do
    assert standby.ok("outdated", address=NODE["pv2"]) is None
    agent.restart()
    assert standby.ok("outdated", address=NODE["pv2"]) is None


# ---------------------------------------------------------------- errors
def test_a_wrong_or_exposed_token_is_a_permanent_error_naming_the_fix(
    lab: Lab, agent: Agent, nodes: dict[str, Node]
) -> None:
    assert lab.dir is not None
    node = nodes["pv1"]
    assert node.ok("check") is None
    wrong = write_token(lab.dir / "wrong.token", WRONG_TOKEN)
    reply = node.call("fence", address=NODE["pv2"], token_file=str(wrong))
    assert reply["kind"] == "PermanentProviderError"
    assert f"refused the token of {wrong}" in reply["error"]
    assert "--token-file" in reply["error"]
    assert link_state("pv2") == "UP"  # refused: nothing was done
    exposed = write_token(lab.dir / "exposed.token", mode=0o644)
    reply = node.call("check", token_file=str(exposed))
    assert reply["kind"] == "PermanentProviderError"
    assert f"may be read by other users (mode 0644): chmod 600 {exposed}" in reply["error"]
    log = agent.log.read_text()
    assert "wrong or missing token" in log
    assert WRONG_TOKEN not in log
    # The agent refuses such a token file too, before it listens.
    refused = subprocess.run(agent.command(exposed), capture_output=True, text=True, timeout=30)
    assert refused.returncode == labhost.EXIT_USAGE
    assert "chmod 600" in refused.stderr


def test_an_agent_down_or_unreachable_is_a_transient_error_within_a_bound(
    lab: Lab, agent: Agent, nodes: dict[str, Node]
) -> None:
    node = nodes["pv1"]
    agent.stop()
    reply = node.call("fence", address=NODE["pv2"])
    print(f"\nagent down: {reply['seconds']:.3f} s to the error")
    assert reply["kind"] == "TransientProviderError"
    assert "cannot be reached" in reply["error"]
    assert "python -m esc.ha.labhost" in reply["error"]
    assert reply["seconds"] < REFUSED_BOUND

    agent.start()
    lab.gateway_down("pv1")
    try:
        reply = node.call("fence", address=NODE["pv2"])
    finally:
        lab.gateway_up("pv1")
    print(f"agent unreachable: {reply['seconds']:.3f} s to the error")
    assert reply["kind"] == "TransientProviderError"
    assert "timed out connecting" in reply["error"]
    assert 0.9 < reply["seconds"] < CONNECT_BOUND
    assert link_state("pv2") == "UP"
    assert node.ok("outdated", address=NODE["pv2"]) is None  # reachable again


def test_an_unknown_node_is_refused_by_name(nodes: dict[str, Node]) -> None:
    reply = nodes["pv1"].call("fence", address=f"{NET}.99")
    assert reply["kind"] == "UnknownNode"  # a PermanentProviderError of its own kind
    assert (
        f"no node {NET}.99 at this provider (it has {NODE['pv1']}, {NODE['pv2']})" in reply["error"]
    )
    reply = nodes["pv1"].call("mark_outdated", address="pv2", reason="x")
    assert reply["kind"] == "PermanentProviderError"
    assert "not a node address" in reply["error"]


# ---------------------------------------------------------------- without the lab
def test_no_provider_configured_is_none_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    assert load_provider(tmp_path, HaSettings()) is None
    with pytest.raises(PermanentProviderError, match=r"unknown node provider 'openstak'.*: lab"):
        load_provider(tmp_path, HaSettings(provider="openstak"))
    with pytest.raises(PermanentProviderError, match=r"is not valid"):
        load_provider(tmp_path, HaSettings(provider="../lab"))
    with pytest.raises(PermanentProviderError, match=r"provider_url and provider_token_file"):
        load_provider(tmp_path, HaSettings(provider="lab", provider_url=AGENT_URL))
    ha = HaSettings(provider="lab", provider_url=AGENT_URL, provider_token_file="p.token")
    provider = load_provider(tmp_path, ha)
    assert isinstance(provider, LabProvider)
    assert provider.token_file == tmp_path / "p.token"
    with pytest.raises(PermanentProviderError, match=r"cannot read the node provider token file"):
        provider.check()  # no token file: refused before any traffic
    provider.close()


def test_the_agent_refuses_bad_options_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = write_token(tmp_path / "t")
    base = ["--listen", f"{GATEWAY}:0", "--token-file", str(token), "--state", str(tmp_path / "s")]
    for options, message in (
        (["--node", "pv1"], "give ADDRESS=NETNS"),
        (["--node", "node1=pv1"], "give ADDRESS=NETNS"),
        (["--node", f"{NET}.13=pvnone"], "no network namespace pvnone"),
        ([], "no --node"),
    ):
        assert labhost.main([*base, *options]) == labhost.EXIT_USAGE
        assert message in capsys.readouterr().err
    listen = ["--listen", "labhost:7700", *base[2:], "--node", "x"]
    assert labhost.main(listen) == labhost.EXIT_USAGE
    assert "give IP:PORT" in capsys.readouterr().err


def test_a_damaged_state_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(labhost.UsageError, match=r"cannot read the state file .*remove it"):
        labhost.load_state(state)
    state.write_text('{"nodes": []}')
    with pytest.raises(labhost.UsageError, match=r"not one of this agent"):
        labhost.load_state(state)
    assert labhost.load_state(tmp_path / "absent.json") == {"format": 1, "nodes": {}}


def test_the_agent_refuses_a_state_file_it_cannot_write(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--listen", f"{GATEWAY}:0", "--token-file", str(write_token(tmp_path / "t"))]
    options += ["--node", f"{NODE['pv1']}=pv1", "--state", str(tmp_path / "absent" / "state")]
    assert labhost.main(options) == labhost.EXIT_USAGE
    assert "cannot write the state file" in capsys.readouterr().err
