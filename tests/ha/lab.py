"""A lab of network-namespace test hosts on one bridge, for the HA tests and benchmarks.

    with Lab(hosts=2, net="198.18.20.0/24", prefix="ka") as lab:
        lab.popen("ka1", ["keepalived", ...])
        lab.host_down("ka1")

What it builds (root needed):
- a bridge `<prefix>br` in the root namespace holding the gateway address NET.1/24;
- namespaces `<prefix>1..N`, each with a veth `eth0` (root side `<prefix>v<i>`, a port
  of the bridge) at NET.11, NET.12, ..., `lo` up and a default route via the gateway;
- the route `unreachable NET.0/24 metric 4242` in the root namespace, so that packets
  for the test range can never leave through the machine's real interface, not even
  while the bridge is being built or torn down;
- an nftables table `bridge <prefix>lab` in the root namespace, where the faults
  (partition, gateway loss) are drop rules on the bridge ports.

Every address is inside 198.18.0.0/15 (the range reserved for benchmarking); nothing
sends traffic anywhere else. Teardown always runs (exception, KeyboardInterrupt, and
SIGTERM, which is turned into SystemExit while a lab is open) and removes everything:
first the processes left in the namespaces, then the root-side veths explicitly,
because a namespace can outlive `ip netns del` while orphaned sockets of killed
processes still reference it, and its veth would stay behind.

Importable from tests (tests/ha is on sys.path for its own modules) and from bench/
scripts after `sys.path.insert(0, "tests/ha")`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

TEST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_NET = "198.18.20.0/24"
DEFAULT_PREFIX = "ka"
FALLBACK_METRIC = 4242
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
# Interface names are at most 15 bytes; "<prefix>br" and "<prefix>v<i>" must fit.
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# Tools the lab runs, with the Debian package that has each.
TOOLS = {"ip": "iproute2", "nft": "nftables"}
# A host answers every connection on its banner port with its name and closes.
_BANNER_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(64)
reply = sys.argv[2].encode() + b"\\n"
while True:
    conn, _ = server.accept()
    try:
        conn.sendall(reply)
    except OSError:
        pass
    conn.close()
"""


class LabError(RuntimeError):
    """The lab cannot be built or was not removed; the message says what and the fix."""


def availability() -> str | None:
    """None when a lab can be built here, else why not (and the fix)."""
    if os.geteuid() != 0:
        return "the network-namespace lab needs root (ip netns, veth, nftables)"
    missing = [
        f"{tool} (Debian package {deb})" for tool, deb in TOOLS.items() if not shutil.which(tool)
    ]
    if missing:
        return f"missing {', '.join(missing)}: install them (./scripts/test does)"
    return None


@dataclass(frozen=True)
class Host:
    """One test host: its namespace, its address on eth0, and its bridge port."""

    ns: str
    address: ipaddress.IPv4Address
    veth: str


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=30)
    if check and result.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result.stdout


def tcp_probe(address: str, port: int, timeout: float = 0.2) -> str:
    """'open', 'refused' (an RST: the host is reachable, nothing listens) or 'silent'.

    There is no ping on the machines this runs on; a TCP answer of either kind proves
    the path works, silence (timeout, unreachable) that it does not.
    """
    with socket.socket() as probe:
        probe.settimeout(timeout)
        try:
            probe.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "silent"
        return "open"


def who_answers(address: str, port: int, timeout: float = 0.2) -> str | None:
    """The name a banner server at address:port sends (see Lab.serve_banner), or None."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return data.decode(errors="replace").strip() or None


class Lab:
    """N namespace test hosts on a bridge; use as a context manager.

    Faults: host_down / link_up / host_up, partition / heal, gateway_down / gateway_up.
    Processes: run / popen inside a host; serve_banner for a TCP listener naming the host.
    """

    def __init__(
        self,
        hosts: int = 2,
        *,
        net: str = DEFAULT_NET,
        prefix: str = DEFAULT_PREFIX,
        first_host: int = 11,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.net = ipaddress.IPv4Network(net)
        if self.net.prefixlen != 24 or not self.net.subnet_of(TEST_RANGE):
            raise LabError(f"net {net} must be a /24 inside {TEST_RANGE}, e.g. {DEFAULT_NET}")
        if not _PREFIX.match(prefix):
            raise LabError(
                f"prefix {prefix!r} must be 1-8 lowercase letters/digits starting with a letter "
                "(interface names are at most 15 bytes)"
            )
        if not 1 <= hosts <= 9 or not 2 <= first_host <= 254 - hosts:
            raise LabError(f"{hosts} hosts from .{first_host} do not fit (1-9 hosts in .2-.254)")
        self.prefix = prefix
        self.gateway = self.net.network_address + 1
        self.bridge = f"{prefix}br"
        self.nft_table = f"{prefix}lab"
        self.hosts = [
            Host(f"{prefix}{i}", self.net.network_address + first_host + i - 1, f"{prefix}v{i}")
            for i in range(1, hosts + 1)
        ]
        self._by_ns = {host.ns: host for host in self.hosts}
        self._workdir_arg = workdir
        self.dir: Path | None = None
        self._own_dir = False
        self._started: list[subprocess.Popen] = []
        self._partitions: set[frozenset[str]] = set()
        self._gateway_cut: set[str] = set()
        self._built = False
        self._old_sigterm: Any = None
        self._was_subreaper = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        leftovers = self.teardown()
        if leftovers and exc is None:
            raise LabError(f"lab teardown left: {', '.join(leftovers)}; remove them by hand")
        if leftovers:
            print(f"lab teardown left: {', '.join(leftovers)}", file=sys.stderr)

    def start(self) -> None:
        reason = availability()
        if reason:
            raise LabError(reason)
        self.preflight()
        self._catch_sigterm()
        self._was_subreaper = _subreaper(True)
        self._built = True
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def preflight(self) -> None:
        """Refuse to build over anything of this lab's names or range (another run?)."""
        found = self._existing()
        if found:
            raise LabError(
                f"{', '.join(found)} already exist(s): another lab with prefix {self.prefix!r} or "
                f"net {self.net} is running, or one was not cleaned up; pick another prefix/net "
                "or remove them"
            )

    def _existing(self) -> list[str]:
        found = []
        namespaces = set(_run(["ip", "netns", "list"], check=False).split())
        found += [f"netns {h.ns}" for h in self.hosts if h.ns in namespaces]
        for link in [self.bridge, *(h.veth for h in self.hosts)]:
            if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0:
                found.append(f"link {link}")
        routes = _run(["ip", "route", "show", "table", "all"], check=False)
        if re.search(rf"^unreachable {re.escape(str(self.net))}\b", routes, re.M):
            found.append(f"route 'unreachable {self.net}'")
        if _run(["ip", "-4", "-o", "addr", "show", "to", str(self.net)], check=False).strip():
            found.append(f"an address in {self.net} in the root namespace")
        table = ["nft", "list", "table", "bridge", self.nft_table]
        if subprocess.run(table, capture_output=True).returncode == 0:
            found.append(f"nftables table bridge {self.nft_table}")
        return found

    def _build(self) -> None:
        if self._workdir_arg is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-lab."))
            self._own_dir = True
        else:
            self.dir = Path(self._workdir_arg)
            self.dir.mkdir(parents=True, exist_ok=True)
        # The safety net comes first and goes last.
        _run(["ip", "route", "add", "unreachable", str(self.net), "metric", str(FALLBACK_METRIC)])
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        self._apply_faults()
        for host in self.hosts:
            _run(["ip", "netns", "add", host.ns])
            veth = ["ip", "link", "add", host.veth, "type", "veth"]
            _run([*veth, "peer", "name", "eth0", "netns", host.ns])
            _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
            _run(["ip", "-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
            _run(["ip", "-n", host.ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", host.ns, "route", "add", "default", "via", str(self.gateway)])
        for host in self.hosts:
            self._wait_link_up(host)

    def _wait_link_up(self, host: Host, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "state UP" in _run(["ip", "-n", host.ns, "link", "show", "eth0"], check=False):
                return
            time.sleep(0.05)
        raise LabError(f"eth0 of {host.ns} did not come up within {timeout:.0f} s")

    def teardown(self) -> list[str]:
        """Remove everything the lab made; return what is still there (empty: all gone)."""
        if not self._built:
            return []
        self._built = False
        problems = []
        for host in self.hosts:
            try:
                self.kill_all(host.ns)
            except LabError as error:  # keep tearing down; reported with the leftovers
                problems.append(str(error))
        for process in self._started:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self._started.clear()
        for host in self.hosts:
            _run(["ip", "link", "del", host.veth], check=False)
        for host in self.hosts:
            _run(["ip", "netns", "del", host.ns], check=False)
        _run(["nft", "delete", "table", "bridge", self.nft_table], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        fallback = ["unreachable", str(self.net), "metric", str(FALLBACK_METRIC)]
        _run(["ip", "route", "del", *fallback], check=False)
        if self._own_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._restore_sigterm()
        if not self._was_subreaper:
            _subreaper(False)
        return problems + self._existing() + [f"process {pid}" for pid in self._lab_pids()]

    def _catch_sigterm(self) -> None:
        # SIGTERM's default action would end the process without unwinding, leaving the
        # lab's links and namespaces behind; as SystemExit, teardown runs.
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        except ValueError:  # not the main thread: leave signals alone
            self._old_sigterm = None

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # ------------------------------------------------------------------ hosts
    def host(self, ns: str) -> Host:
        try:
            return self._by_ns[ns]
        except KeyError:
            raise LabError(f"no host {ns!r} in this lab ({', '.join(self._by_ns)})") from None

    def address(self, ns: str) -> ipaddress.IPv4Address:
        return self.host(ns).address

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """argv run inside host ns."""
        return ["ip", "netns", "exec", self.host(ns).ns, *map(str, argv)]

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess:
        """Run argv inside host ns and wait; check: a non-zero exit raises LabError."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result = subprocess.run(self.exec_argv(ns, argv), timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise LabError(
                f"`{' '.join(map(str, argv))}` in {ns} exited {result.returncode}: "
                f"{result.stderr or ''}{result.stdout or ''}".strip()
            )
        return result

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start argv inside host ns; the lab kills it at teardown if it still runs."""
        # `ip netns exec` execs argv, so the Popen's pid is the command's own.
        process = subprocess.Popen(self.exec_argv(ns, argv), **kwargs)
        self._started.append(process)
        return process

    def serve_banner(self, ns: str, port: int) -> subprocess.Popen:
        """A TCP listener on 0.0.0.0:port inside ns answering each connection with ns's name.

        Through a VIP, who_answers(vip, port) tells which host holds it.
        """
        process = self.popen(
            ns, [sys.executable, "-c", _BANNER_SERVER, str(port), ns], stdin=subprocess.DEVNULL
        )
        address = str(self.address(ns))
        deadline = time.monotonic() + 10
        while who_answers(address, port) != ns:
            if process.poll() is not None:
                raise LabError(f"the banner server in {ns} exited {process.returncode}")
            if time.monotonic() > deadline:
                raise LabError(f"the banner server in {ns} did not answer on {address}:{port}")
            time.sleep(0.05)
        return process

    def pids(self, ns: str) -> list[int]:
        """Every process whose network namespace is ns's."""
        out = _run(["ip", "netns", "pids", self.host(ns).ns], check=False)
        return [int(pid) for pid in out.split()]

    def _lab_pids(self) -> list[int]:
        namespaces = set(_run(["ip", "netns", "list"], check=False).split())
        return [pid for host in self.hosts if host.ns in namespaces for pid in self.pids(host.ns)]

    def reset(self) -> None:
        """Back to the state a test starts from: no fault, every host up (as after a
        reboot) and running nothing."""
        self._partitions.clear()
        self._gateway_cut.clear()
        self._apply_faults()
        for host in self.hosts:
            self.kill_all(host.ns)
            self.host_up(host.ns)

    def kill_all(self, ns: str, timeout: float = 5.0) -> None:
        """SIGKILL every process in ns and reap it, so none lingers as a zombie.

        A zombie keeps its pid: keepalived, started again on the host, would find its
        killed predecessor's pid alive and refuse ("daemon is already running").
        """
        host = self.host(ns)
        if host.ns not in _run(["ip", "netns", "list"], check=False).split():
            return
        deadline = time.monotonic() + timeout
        killed: set[int] = set()
        while pids := self.pids(ns):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(pids)
            if time.monotonic() > deadline:
                raise LabError(f"processes {pids} in {ns} survived SIGKILL for {timeout:.0f} s")
            time.sleep(0.02)
        ours = {process.pid: process for process in self._started}
        for pid in killed:
            if pid in ours:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    ours[pid].wait(timeout=max(0.1, deadline - time.monotonic()))
            else:
                self._reap(pid, deadline)

    def _reap(self, pid: int, deadline: float) -> None:
        # An orphan of a killed process (keepalived's VRRP child) is re-parented to
        # the lab, its subreaper; reap it here rather than leave it to an init that
        # may never do it.
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return  # not ours (reaped by its own parent, or gone)
            if done or time.monotonic() > deadline:
                return
            time.sleep(0.01)

    # ------------------------------------------------------------------ faults
    def host_down(self, ns: str) -> None:
        """The host dies: its link goes down and every process in it gets SIGKILL.

        Its addresses stay on eth0, as they do in a frozen or crashed machine; host_up
        brings it back as after a reboot.
        """
        _run(["ip", "-n", self.host(ns).ns, "link", "set", "eth0", "down"])
        self.kill_all(ns)

    def link_up(self, ns: str) -> None:
        """eth0 up again, with the default route the kernel dropped when it went down."""
        host = self.host(ns)
        _run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])
        self._wait_link_up(host)
        if "default" not in _run(["ip", "-n", host.ns, "route", "show", "default"]):
            _run(["ip", "-n", host.ns, "route", "add", "default", "via", str(self.gateway)])

    def host_up(self, ns: str) -> None:
        """The host returns as after a reboot: only its own address on eth0, link up."""
        host = self.host(ns)
        _run(["ip", "-n", host.ns, "addr", "flush", "dev", "eth0"])
        _run(["ip", "-n", host.ns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        self.link_up(ns)

    def partition(self, a: str, b: str) -> None:
        """Cut all traffic between hosts a and b; both still reach the gateway."""
        self.host(a), self.host(b)
        self._partitions.add(frozenset((a, b)))
        self._apply_faults()

    def heal(self, a: str, b: str) -> None:
        self._partitions.discard(frozenset((a, b)))
        self._apply_faults()

    def gateway_down(self, ns: str) -> None:
        """Host ns and the gateway can no longer reach each other; the other hosts can."""
        self.host(ns)
        self._gateway_cut.add(ns)
        self._apply_faults()

    def gateway_up(self, ns: str) -> None:
        self._gateway_cut.discard(ns)
        self._apply_faults()

    def _apply_faults(self) -> None:
        # Drop rules on the bridge ports: `forward` is port to port (host to host),
        # `input`/`output` is between a port and the bridge itself (the gateway). The
        # whole table is replaced in one nft transaction, so no rule is ever half there.
        # (A bridge port's `isolated` flag also partitions two hosts, but it cuts a port
        # off from every other isolated port, not from one peer, and cannot cut the
        # gateway.)
        veth = {host.ns: host.veth for host in self.hosts}
        forward = []
        for pair in sorted(sorted(p) for p in self._partitions):
            a, b = (veth[ns] for ns in pair)
            forward += [f'iifname "{a}" oifname "{b}" drop', f'iifname "{b}" oifname "{a}" drop']
        cut = sorted(veth[ns] for ns in self._gateway_cut)
        chains = {
            "forward": forward,
            "input": [f'iifname "{v}" drop' for v in cut],
            "output": [f'oifname "{v}" drop' for v in cut],
        }
        lines = [f"table bridge {self.nft_table}", f"delete table bridge {self.nft_table}"]
        lines.append(f"table bridge {self.nft_table} {{")
        for name, rules in chains.items():
            lines.append(f"  chain {name} {{")
            lines.append(f"    type filter hook {name} priority 0; policy accept;")
            lines += [f"    {rule}" for rule in rules]
            lines.append("  }")
        lines.append("}")
        _run(["nft", "-f", "-"], input="\n".join(lines) + "\n")

    # ------------------------------------------------------------------ checks
    def probe(self, ns: str, address: str, port: int, timeout: float = 0.3) -> str:
        """tcp_probe from inside host ns: 'open', 'refused' or 'silent'."""
        code = (
            "import socket, sys\n"
            "s = socket.socket(); s.settimeout(float(sys.argv[3]))\n"
            "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
            "except ConnectionRefusedError:\n    print('refused')\n"
            "except OSError:\n    print('silent')\n"
        )
        out = self.run(ns, [sys.executable, "-c", code, address, str(port), str(timeout)])
        return out.stdout.strip()

    def addresses(self, ns: str) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses on host ns's eth0."""
        out = _run(["ip", "-n", self.host(ns).ns, "-4", "-o", "addr", "show", "dev", "eth0"])
        return [ipaddress.IPv4Interface(line.split()[3]) for line in out.splitlines()]


def _subreaper(on: bool) -> bool:
    """Make this process the reaper of its orphaned descendants (or stop); return the
    previous setting."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise LabError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    return bool(previous.value)


def _sigterm_to_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
