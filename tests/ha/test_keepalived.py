"""keepalived for the HA pair: the rendered config, the notify FIFO, and real Debian
keepalived in two network-namespace test hosts holding a VIP the root namespace uses.

Measured figures are printed (run with -s to see them) and bounded generously.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esc.config import HaSettings
from esc.ha import keepalived as ka

sys.path.insert(0, str(Path(__file__).parent))
from lab import Lab, LabError, availability, tcp_probe, who_answers
from needs import keepalived_missing, need
from pair import BANNER_PORT, VIP_HOST, Node, Pair

NET = "198.18.22"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "kat"
VIP = f"{NET}.{VIP_HOST}"
TAKEOVER_BOUND = 3.0  # seconds; measured here: about 0.4 (host down)


def settings(address: str, net: str = NET) -> HaSettings:
    return HaSettings(
        enabled=True,
        node_list=[f"{net}.11", f"{net}.12"],
        address=address,
        kad_vip=f"{net}.100/24",
        gateway_ip=f"{net}.1",
        kad_vri=61,
    )


# ---------------------------------------------------------------- the config
def test_config_is_what_the_pair_needs_and_keepalived_accepts_it(tmp_path: Path) -> None:
    need(keepalived_missing())
    rendered = {}
    for name, address in (("n1", f"{NET}.11"), ("n2", f"{NET}.12")):
        paths = ka.KeepalivedPaths.under(tmp_path / name)
        conf = ka.write_config(settings(address), name, paths)
        ka.check_config(conf)
        rendered[name] = conf.read_text()
    for name, peer, priority in (("n1", ".12", 254), ("n2", ".11", 253)):
        text = rendered[name]
        for line in (
            "vrrp_version 3",
            "state BACKUP",
            "nopreempt",
            f"priority {priority}",
            "virtual_router_id 61",
            "advert_int 0.1",
            "interface eth0",
            f"unicast_peer {{\n        {NET}{peer}\n    }}",
            f"{VIP}/24 dev eth0",
            f"vrrp_notify_fifo {tmp_path / name / 'keepalived.fifo'}",
            "weight 0",
        ):
            assert line in text, f"{line!r} missing from {name}'s config"

    # The check is real: keepalived rejects a config it cannot run.
    broken = tmp_path / "broken.conf"
    broken.write_text(rendered["n1"].replace("virtual_router_id 61", "virtual_router_id 999"))
    with pytest.raises(ka.KeepalivedError, match="rejects"):
        ka.check_config(broken)


def test_config_refuses_what_keepalived_could_not_parse(tmp_path: Path) -> None:
    paths = ka.KeepalivedPaths.under(tmp_path)
    with pytest.raises(ka.KeepalivedError, match="only on an HA node"):
        ka.render_config(HaSettings(), "n1", paths)
    with pytest.raises(ka.KeepalivedError, match="router_id"):
        ka.render_config(settings(f"{NET}.11"), "node one", paths)
    with pytest.raises(ka.KeepalivedError, match="space"):
        ka.render_config(settings(f"{NET}.11"), "n1", ka.KeepalivedPaths.under(tmp_path / "a b"))


def test_command_runs_keepalived_in_the_foreground_with_its_own_pid_files(tmp_path: Path) -> None:
    paths = ka.KeepalivedPaths.under(tmp_path)
    argv = ka.command(paths, keepalived="/usr/sbin/keepalived")
    assert argv[0] == "/usr/sbin/keepalived"
    for option, value in (
        ("--use-file", paths.conf),
        ("--pid", paths.pidfile),
        ("--vrrp_pid", paths.vrrp_pidfile),
    ):
        assert argv[argv.index(option) + 1] == str(value)
    assert {"--dont-fork", "--vrrp", "--log-console", "--log-detail"} <= set(argv)


# ---------------------------------------------------------------- the FIFO reader
def test_notify_fifo_reads_events_across_writer_restarts_and_a_replaced_fifo(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run" / "keepalived.fifo"
    with ka.NotifyFifo(path) as fifo:
        assert path.is_fifo()
        assert fifo.read(timeout=0.05) is None

        # A writer's lines, in order; lines that are not INSTANCE events are skipped.
        with open(path, "w") as writer:
            writer.write('GROUP "G" MASTER 0\nINSTANCE "ESC" BACKUP 150\nINSTANCE "ESC" MAS')
            writer.flush()
            assert fifo.read(timeout=1) == ka.NotifyEvent("ESC", "BACKUP", 150)
            assert fifo.read(timeout=0.1) is None  # half a line waits for the rest
            writer.write("TER 150\n")
        assert fifo.read(timeout=1) == ka.NotifyEvent("ESC", "MASTER", 150)

        # The writer is gone (keepalived stopped): no end of file; the next one is read.
        assert fifo.read(timeout=0.1) is None
        with open(path, "w") as writer:
            writer.write('INSTANCE "ESC" FAULT 150\n')
        assert fifo.read(timeout=1) == ka.NotifyEvent("ESC", "FAULT", 150)

        # The FIFO is replaced (a keepalived that created its own removed it on exit,
        # the next one made a new one): the reader follows the path.
        path.unlink()
        os.mkfifo(path)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # as keepalived opens it
        os.write(fd, b'INSTANCE "ESC" STOP 150\n')
        assert fifo.read(timeout=2) == ka.NotifyEvent("ESC", "STOP", 150)
        os.close(fd)

    not_a_fifo = tmp_path / "plain"
    not_a_fifo.write_text("")
    with pytest.raises(ka.KeepalivedError, match="not a FIFO"):
        ka.NotifyFifo(not_a_fifo).open()


def test_track_file_holds_zero_when_healthy_and_one_for_fault(tmp_path: Path) -> None:
    track = ka.TrackFile(tmp_path / "t")
    assert track.read() is None and not track.healthy()
    track.set(True)
    assert track.path.read_text() == "0\n" and track.healthy()
    track.set(False)
    assert track.path.read_text() == "1\n" and not track.healthy()
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no partial file left


# ---------------------------------------------------------------- the pair in the lab
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need(availability())
    need(keepalived_missing())
    with Lab(2, net=f"{NET}.0/24", prefix=PREFIX) as built:
        yield built


@pytest.fixture
def nodes(lab: Lab, tmp_path: Path) -> Iterator[Pair]:
    pair = Pair(lab, tmp_path, port=BANNER_PORT)
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def pair(nodes: Pair) -> tuple[Node, Node]:
    """Both nodes running and healthy, one of them MASTER: (master, backup)."""
    return nodes.start()


def takeover(nodes: Pair, fault: Callable[[], object], label: str) -> float:
    """Seconds from fault on the MASTER until the other node answers on the VIP."""
    elapsed = nodes.takeover(fault, timeout=TAKEOVER_BOUND * 3)
    print(f"\nVIP takeover on {label}: {elapsed:.3f} s")
    return elapsed


def test_one_master_holds_the_vip_and_the_root_namespace_reaches_it(
    pair: tuple[Node, Node],
) -> None:
    master, backup = pair
    assert master.holds_vip() and not backup.holds_vip()
    assert who_answers(VIP, BANNER_PORT) == master.ns
    # Both start in FAULT (the gateway watch has no verdict yet: the track files
    # start at fault), then BACKUP; only the winner ever went MASTER.
    assert [e.state for e in master.events] == ["FAULT", "BACKUP", "MASTER"]
    assert [e.state for e in backup.events] == ["FAULT", "BACKUP"]
    # Priorities by position in node_list.
    for node in pair:
        expected = 254 if node.ha.address == node.ha.node_list[0] else 253
        assert {e.priority for e in node.events} == {expected}


def test_host_down_moves_the_vip_and_the_returning_node_does_not_take_it_back(
    lab: Lab, nodes: Pair, pair: tuple[Node, Node]
) -> None:
    master, backup = pair
    elapsed = takeover(nodes, lambda: lab.host_down(master.ns), "host down")
    assert elapsed < TAKEOVER_BOUND
    backup.wait_state("MASTER")

    # The old MASTER comes back (rebooted) and starts again: nopreempt keeps the VIP
    # where it is, although the returning node has the higher priority.
    lab.host_up(master.ns)
    events_before = len(master.events)
    master.start()
    master.wait_state("BACKUP")
    time.sleep(10 * master.ha.advert_int)  # ten adverts of the lower priority heard
    assert "MASTER" not in [e.state for e in master.events[events_before:]]
    assert backup.holds_vip() and not master.holds_vip()
    assert who_answers(VIP, BANNER_PORT) == backup.ns


def test_a_health_fault_on_the_master_moves_the_vip(nodes: Pair, pair: tuple[Node, Node]) -> None:
    master, backup = pair
    elapsed = takeover(nodes, lambda: master.health.set(False), "health track file fault")
    assert elapsed < TAKEOVER_BOUND
    master.wait_state("FAULT")
    assert not master.holds_vip()
    # Healthy again: BACKUP, and the VIP stays with the new MASTER.
    master.health.set(True)
    master.wait_state("BACKUP")
    assert backup.state == "MASTER" and backup.holds_vip()


def test_losing_the_gateway_moves_the_vip(lab: Lab, nodes: Pair, pair: tuple[Node, Node]) -> None:
    master, backup = pair
    elapsed = takeover(nodes, lambda: lab.gateway_down(master.ns), "gateway loss")
    assert elapsed < TAKEOVER_BOUND
    master.wait_state("FAULT")
    assert not master.holds_vip()
    assert backup.state == "MASTER"
    lab.gateway_up(master.ns)
    master.wait_state("BACKUP")
    assert backup.holds_vip()


def test_a_node_that_never_became_healthy_does_not_take_the_vip(
    lab: Lab, pair: tuple[Node, Node]
) -> None:
    master, backup = pair
    backup.health.set(False)
    backup.wait_state("FAULT")
    lab.host_down(master.ns)
    time.sleep(1.0)  # more than twice the takeover time
    assert not backup.holds_vip()
    assert who_answers(VIP, BANNER_PORT) is None


def test_a_partition_makes_two_masters_and_healing_leaves_one(
    lab: Lab, nodes: Pair, pair: tuple[Node, Node]
) -> None:
    # VRRP alone cannot prevent a split brain: cut off from each other, both nodes
    # hold the VIP. Whatever acts on becoming MASTER must fence the other node first.
    master, backup = pair
    lab.partition(master.ns, backup.ns)
    backup.wait_state("MASTER")
    assert master.state == "MASTER"
    assert master.holds_vip() and backup.holds_vip()

    lab.heal(master.ns, backup.ns)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and master.holds_vip() == backup.holds_vip():
        time.sleep(0.05)
    holders = [n for n in pair if n.holds_vip()]
    assert len(holders) == 1, f"after healing {[n.ns for n in holders]} hold the VIP"
    # The lower priority (the second of node_list) is the one that steps down.
    assert holders[0].ha.address == holders[0].ha.node_list[0]
    other = next(n for n in pair if n is not holders[0])
    other.wait_state("BACKUP")
    assert holders[0].state == "MASTER"
    # Clients follow the one that kept it (it repeats its gratuitous ARPs).
    assert nodes.holder(5) is holders[0]


def test_a_graceful_stop_hands_the_vip_over(nodes: Pair, pair: tuple[Node, Node]) -> None:
    master, _ = pair
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(ka.stop(master.paths)))
    elapsed = takeover(nodes, stopper.start, "keepalived stopped (SIGTERM)")
    stopper.join(timeout=10)
    assert stopped == [True]
    assert elapsed < TAKEOVER_BOUND
    assert ka.running_pid(master.paths) is None
    assert not master.holds_vip()
    assert "STOP" in [e.state for e in master.events]


def test_stop_reports_a_keepalived_it_had_to_kill(nodes: Pair, pair: tuple[Node, Node]) -> None:
    master, backup = pair
    pids = [int(p.read_text()) for p in (master.paths.pidfile, master.paths.vrrp_pidfile)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # a hung keepalived: SIGTERM does nothing
    assert ka.stop(master.paths, timeout=0.5) is False
    assert ka.running_pid(master.paths) is None
    # What the caller is warned about: a killed keepalived leaves the VIP behind.
    assert master.holds_vip()
    backup.wait_state("MASTER", timeout=20)


# ---------------------------------------------------------------- the lab itself
def lab_leftovers(prefix: str, net: str) -> list[str]:
    """Everything of a lab (prefix, net) that still exists."""
    found = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in namespaces.splitlines() if line.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [line.split(":")[1].strip() for line in links.splitlines() if f": {prefix}" in line]
    routes = subprocess.run(
        ["ip", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    found += [line for line in routes.splitlines() if f"{net}." in line]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    found += [line for line in tables.splitlines() if f"{prefix}lab" in line]
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"keepalived" in cmdline and f"{prefix}-lab.".encode() in cmdline:
            words = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"process {proc.name}: {words}")
    return found


def test_lab_faults_cut_exactly_what_they_say(lab: Lab) -> None:
    one, two = (host.ns for host in lab.hosts)
    gateway = str(lab.gateway)

    def paths() -> dict[str, str]:
        # A closed port: an RST ("refused") proves the path works both ways.
        return {
            "1-2": lab.probe(one, str(lab.address(two)), 9),
            "1-gw": lab.probe(one, gateway, 9),
            "2-gw": lab.probe(two, gateway, 9),
            "root-1": tcp_probe(str(lab.address(one)), 9),
        }

    every_path = {"1-2": "refused", "1-gw": "refused", "2-gw": "refused", "root-1": "refused"}
    assert paths() == every_path
    lab.partition(one, two)
    assert paths() == {**every_path, "1-2": "silent"}
    lab.heal(one, two)
    lab.gateway_down(one)
    assert paths() == {**every_path, "1-gw": "silent", "root-1": "silent"}
    lab.gateway_up(one)
    assert paths() == every_path


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_teardown_removes_everything_even_when_the_test_fails(failure: type) -> None:
    need(availability())
    need(keepalived_missing())
    prefix, net = "kaz", "198.18.23"
    assert lab_leftovers(prefix, net) == []
    with pytest.raises(failure), Lab(2, net=f"{net}.0/24", prefix=prefix) as lab:
        assert lab.dir is not None
        for host in lab.hosts:
            node_ha = settings(str(host.address), net=net)
            paths = ka.KeepalivedPaths.under(lab.dir / host.ns)
            ka.write_config(node_ha, host.ns, paths)
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            lab.popen(host.ns, ka.command(paths), **quiet)
        lab.partition(lab.hosts[0].ns, lab.hosts[1].ns)
        lab.gateway_down(lab.hosts[0].ns)
        deadline = time.monotonic() + 10
        while not all(ka.running_pid(ka.KeepalivedPaths.under(lab.dir / h.ns)) for h in lab.hosts):
            assert time.monotonic() < deadline, "keepalived did not start in the lab"
            time.sleep(0.05)
        assert lab_leftovers(prefix, net) != []  # the check sees a lab when there is one
        raise failure("the test fails inside the lab")
    assert lab_leftovers(prefix, net) == []


def test_preflight_refuses_a_lab_over_an_existing_one() -> None:
    need(availability())
    with Lab(1, net="198.18.23.0/24", prefix="kaz"):
        with pytest.raises(LabError, match=r"netns kaz1, link kazbr"):
            Lab(1, net="198.18.24.0/24", prefix="kaz").start()
        with pytest.raises(LabError, match=r"route 'unreachable 198\.18\.23\.0/24'"):
            Lab(1, net="198.18.23.0/24", prefix="kay").start()
    assert lab_leftovers("kaz", "198.18.23") == []
    assert lab_leftovers("kay", "198.18.23") == []


def test_lab_refuses_addresses_outside_the_test_range() -> None:
    with pytest.raises(LabError, match=r"inside 198\.18\.0\.0/15"):
        Lab(2, net="192.168.122.0/24")
    with pytest.raises(LabError, match=r"inside 198\.18\.0\.0/15"):
        Lab(2, net="198.18.0.0/16")


SIGTERM_LAB = """
import sys, time
sys.path.insert(0, sys.argv[1])
from lab import Lab
with Lab(1, net="198.18.23.0/24", prefix="kaz") as lab:
    sleeper = lab.popen("kaz1", ["sleep", "600"])
    print("built", sleeper.pid, flush=True)
    time.sleep(600)
"""


def test_sigterm_tears_the_lab_down() -> None:
    need(availability())
    here = str(Path(__file__).parent)
    script = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_LAB, here], stdout=subprocess.PIPE, text=True
    )
    try:
        assert script.stdout is not None
        word, pid = script.stdout.readline().split()
        assert word == "built"
        assert lab_leftovers("kaz", "198.18.23") != []
        assert Path(f"/proc/{pid}").exists()
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if script.poll() is None:
            script.kill()
    assert lab_leftovers("kaz", "198.18.23") == []
    assert not Path(f"/proc/{pid}").exists(), "the process started in the lab survived"


def test_stale_pid_files_are_removed_and_a_live_keepalived_of_the_node_is_kept(
    tmp_path: Path,
) -> None:
    # After a fence or a reboot keepalived would find its old pid file, see the pid in
    # use and exit 0 ("daemon is already running"): the node must clear it first.
    paths = ka.KeepalivedPaths.under(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-f", str(paths.conf)]
    )
    try:
        deadline = time.monotonic() + 5
        while str(paths.conf).encode() not in Path(f"/proc/{ours.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in keepalived did not start"
            time.sleep(0.01)
        paths.pidfile.write_text(f"{other.pid}\n")  # a pid given to another process
        paths.vrrp_pidfile.write_text(f"{ours.pid}\n")  # this node's (its config path)
        assert ka.clear_stale_pidfiles(paths) == [paths.pidfile]
        assert not paths.pidfile.exists() and paths.vrrp_pidfile.exists()
        ours.kill()
        ours.wait()  # reaped: the pid names nothing now
        assert ka.clear_stale_pidfiles(paths) == [paths.vrrp_pidfile]
    finally:
        for process in (other, ours):
            process.kill()
            process.wait()
