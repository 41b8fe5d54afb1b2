"""An ESC HA pair's keepalived on two lab hosts, for the HA tests and benchmarks.

Each node runs what a real node runs for its VIP: keepalived with the rendered
config and its gateway watch; its health track file is set by the harness (in place
of the node's health loop); a banner server on every address of the host tells who
answers on the VIP; a thread reads the node's notify FIFO into `events`.

    with Lab(2, net=..., prefix=...) as lab:
        pair = Pair(lab, home)
        master, backup = pair.start()
        seconds = pair.takeover(lambda: lab.host_down(master.ns))
        pair.close()
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from lab import Lab, who_answers

from esc.config import HaSettings
from esc.ha import keepalived as ka
from esc.ha.gateway import watch_command

BANNER_PORT = 7100
VIP_HOST = 100  # the VIP is NET.100
KAD_VRI = 61


def pair_settings(lab: Lab, ns: str) -> HaSettings:
    """The [ha] section of the node on host ns: the lab's two hosts are node_list."""
    net = lab.net
    return HaSettings(
        enabled=True,
        node_list=[host.address for host in lab.hosts[:2]],
        address=lab.address(ns),
        kad_vip=ipaddress.IPv4Interface(f"{net.network_address + VIP_HOST}/{net.prefixlen}"),
        gateway_ip=lab.gateway,
        kad_vri=KAD_VRI,
    )


class Node:
    """One node of the pair on a lab host."""

    STATES = ("MASTER", "BACKUP", "FAULT")

    def __init__(self, lab: Lab, ns: str, home: Path, port: int = BANNER_PORT) -> None:
        self.lab = lab
        self.ns = ns
        self.port = port
        self.ha = pair_settings(lab, ns)
        assert self.ha.kad_vip is not None
        self.vip = str(self.ha.kad_vip.ip)
        self.paths = ka.KeepalivedPaths.under(home / ns)
        self.health = ka.TrackFile(self.paths.health_file)
        self.events: list[ka.NotifyEvent] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._logs: list[IO[str]] = []
        ka.write_config(self.ha, ns, self.paths)
        ka.reset_track_files(self.paths)
        # No role manager here: its track file says healthy, the harness steers `health`.
        ka.TrackFile(self.paths.role_file).set(True)
        self.fifo = ka.NotifyFifo(self.paths.notify_fifo)
        self.fifo.open()
        self._reader = threading.Thread(target=self._read, name=f"fifo-{ns}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            event = self.fifo.read(timeout=0.1)
            if event is not None:
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()

    def start(self, healthy: bool = True) -> None:
        """Start the gateway watch, keepalived and the banner server on the host."""
        self.health.set(healthy)
        log = open(self.paths.conf.with_name("keepalived.log"), "a")  # noqa: SIM115
        watch_log = open(self.paths.conf.with_name("gateway.log"), "a")  # noqa: SIM115
        self._logs += [log, watch_log]
        watch = watch_command(self.ha, self.paths)
        self.lab.popen(self.ns, watch, stdout=watch_log, stderr=watch_log)
        self.lab.popen(self.ns, ka.command(self.paths), stdout=log, stderr=log)
        self.lab.serve_banner(self.ns, self.port)

    @property
    def state(self) -> str | None:
        """The last MASTER/BACKUP/FAULT keepalived reported."""
        with self._changed:
            states = [e.state for e in self.events if e.state in self.STATES]
        return states[-1] if states else None

    def wait_state(self, state: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.state != state:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.ns} did not reach {state} within {timeout} s: "
                        f"events {self.events}\n{self.log_tail()}"
                    )
                self._changed.wait(left)

    def holds_vip(self) -> bool:
        return any(str(a.ip) == self.vip for a in self.lab.addresses(self.ns))

    def log_tail(self, lines: int = 15) -> str:
        path = self.paths.conf.with_name("keepalived.log")
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=2)
        self.fifo.close()
        for log in self._logs:
            log.close()


class Pair:
    """The two nodes; start() returns (master, backup) once the VIP answers."""

    def __init__(self, lab: Lab, home: Path, port: int = BANNER_PORT) -> None:
        self.lab = lab
        self.port = port
        self.nodes = [Node(lab, host.ns, home, port) for host in lab.hosts[:2]]
        self.vip = self.nodes[0].vip

    def start(self, timeout: float = 10.0) -> tuple[Node, Node]:
        for node in self.nodes:
            node.start()
        master = self.holder(timeout)
        backup = self.other(master)
        master.wait_state("MASTER")
        backup.wait_state("BACKUP")
        return master, backup

    def other(self, node: Node) -> Node:
        return next(n for n in self.nodes if n is not node)

    def holder(self, timeout: float, exclude: Node | None = None) -> Node:
        """The node answering on the VIP (not exclude), waiting up to timeout."""
        by_name = {n.ns: n for n in self.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = who_answers(self.vip, self.port, timeout=0.05)
            if name in by_name and by_name[name] is not exclude:
                return by_name[name]
            time.sleep(0.01)
        tails = "\n".join(f"--- {n.ns}: {n.events}\n{n.log_tail()}" for n in self.nodes)
        raise AssertionError(f"no node answered on {self.vip} within {timeout} s\n{tails}")

    def takeover(self, fault: Callable[[], object], timeout: float = 10.0) -> float:
        """Seconds from the start of fault (aimed at the MASTER) until the other node
        answers on the VIP."""
        master = self.holder(1.0)
        started = time.monotonic()
        fault()
        self.holder(timeout, exclude=master)
        return time.monotonic() - started

    def close(self) -> None:
        """Stop everything on the hosts and clear every fault (the lab stays)."""
        try:
            self.lab.reset()
        finally:
            for node in self.nodes:
                node.close()
