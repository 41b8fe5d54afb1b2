"""keepalived for an HA pair: the config a node runs it with, its command line, the
files that steer it (track files) and the FIFO it reports its state changes on.

What the rendered config does, and why:
- VRRP version 3, both nodes `state BACKUP` with `nopreempt`: the first node up
  becomes MASTER after about three missed adverts; a node that comes back never takes
  the VIP back by itself (failback is an operator's decision, because a takeover moves
  the database primary too). The priority only settles which node wins when both
  start at once: the first address of node_list has the higher one.
- Unicast adverts to the peer (from this node's own address): they need no multicast
  support from the network between the nodes, and `check_unicast_src` ignores
  adverts from anyone but the peer.
- Three track files with weight 0, so that any non-zero value in one puts the
  instance in FAULT (it releases the VIP, and a MASTER sends a priority-0 advert so the
  peer takes over at once instead of waiting for three missed adverts):
  `health`, written by the node's health loop (its services: escmanager, PostgreSQL),
  `gateway`, written by the gateway watch (`esc.ha.gateway`), and `role`, written by
  the role manager (a node in FAULT, or handing its role over, must not hold the VIP).
  keepalived reads a track file through inotify the moment it changes; nothing is
  forked. Each starts at 1 (fault) when missing, so a node whose checks have not run
  yet never takes the VIP.
  Killing keepalived would not model a dead service: a SIGKILLed keepalived leaves the
  VIP on its interface, so two hosts would answer for it.
- State changes go to a FIFO (`vrrp_notify_fifo`) a long-running process reads with
  NotifyFifo: lines in order, no script forked per transition.
- The VRRP process gets real-time priority as soon as it finds itself scheduled an
  advert interval late (`max_auto_priority`): on a busy host a starved keepalived
  would miss adverts and make the peer take over for nothing.
- Gratuitous ARPs: a burst at once on becoming MASTER, a second burst a second
  later (for a switch or client that missed the first), a refresh while MASTER, and a
  burst when a MASTER hears a lower priority (after a split brain heals, the remaining
  MASTER repeats its claim so clients leave the one that stepped down).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from esc.config import HaSettings

INSTANCE = "ESC"
# Priority by position in node_list. Only a simultaneous start (or two MASTERs
# that hear each other again) compares them (nopreempt), and tracking uses FAULT,
# not priority weights. The highest a backup may have: a BACKUP waits a skew of
# (256 - priority) / 256 advert intervals before it becomes MASTER, after three
# missed adverts and after the old MASTER's priority-0 advert alike. At 150/100
# that was 41/61 ms in which the VIP is on neither node, long enough to lose a
# client's SYN on every planned switchover; at 254/253 it is about 1 ms.
PRIORITIES = (254, 253)
# Gratuitous ARP timing (seconds / counts), see the module docstring.
GARP_MASTER_DELAY = 1
GARP_MASTER_REPEAT = 3
GARP_MASTER_REFRESH = 10
GARP_LOWER_PRIO_REPEAT = 3
# What a track file holds: 0 is healthy; with weight 0 any other number is FAULT.
TRACK_HEALTHY = 0
TRACK_FAULT = 1
DEBIAN_PACKAGE = "keepalived"
KILL_WAIT = 5.0  # seconds stop() waits for a killed keepalived to be gone

_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_INTERFACE = re.compile(r"^[A-Za-z0-9._@-]{1,15}$")
# keepalived's parser treats whitespace, quotes and '#'/'!' (comments) specially.
_UNSAFE_PATH = re.compile(r"[\s\"'#!{}\\]")


class KeepalivedError(RuntimeError):
    """keepalived cannot be configured, started or stopped; the message says the fix."""


@dataclass(frozen=True)
class KeepalivedPaths:
    """Where one node's keepalived files live (all in the node's run/ directory)."""

    conf: Path
    pidfile: Path
    vrrp_pidfile: Path
    notify_fifo: Path
    health_file: Path
    gateway_file: Path
    role_file: Path

    @classmethod
    def under(cls, run_dir: str | os.PathLike[str]) -> KeepalivedPaths:
        run = Path(run_dir)
        return cls(
            conf=run / "keepalived.conf",
            pidfile=run / "keepalived.pid",
            vrrp_pidfile=run / "keepalived-vrrp.pid",
            notify_fifo=run / "keepalived.fifo",
            health_file=run / "ha-health.track",
            gateway_file=run / "ha-gateway.track",
            role_file=run / "ha-role.track",
        )


def _path(path: Path, what: str) -> str:
    text = str(Path(path).absolute())
    if _UNSAFE_PATH.search(text):
        raise KeepalivedError(
            f"the {what} path {text} has a space, quote, brace, backslash, '#' or '!', which "
            "keepalived's config parser cannot take: use a node home without them"
        )
    return text


def _checked(ha: HaSettings, node_name: str) -> tuple[ipaddress.IPv4Address, int]:
    if not ha.enabled or ha.address is None or ha.kad_vip is None:
        raise KeepalivedError(
            "keepalived runs only on an HA node: set [ha] enabled, node_list, address, "
            "kad_vip and gateway_ip in esc.toml (escadm init --ha writes them)"
        )
    if not _TOKEN.match(node_name):
        raise KeepalivedError(
            f"node name {node_name!r} cannot be keepalived's router_id: use 1-64 letters, "
            "digits, '.', '_' or '-' ([node] name in esc.toml)"
        )
    if not _INTERFACE.match(ha.kad_vif):
        raise KeepalivedError(f"kad_vif {ha.kad_vif!r} is not an interface name")
    return ha.peer, PRIORITIES[ha.node_list.index(ha.address)]


def render_config(ha: HaSettings, node_name: str, paths: KeepalivedPaths) -> str:
    """keepalived.conf for this node of the pair."""
    peer, priority = _checked(ha, node_name)
    health = _path(paths.health_file, "health track file")
    gateway = _path(paths.gateway_file, "gateway track file")
    role = _path(paths.role_file, "role track file")
    fifo = _path(paths.notify_fifo, "notify FIFO")
    return f"""\
# keepalived.conf of ESC node {node_name}, rendered from the [ha] section of esc.toml.
# It is rewritten at every start: change esc.toml, not this file.

global_defs {{
    router_id {node_name}
    vrrp_version 3
    vrrp_notify_fifo {fifo}
    fifo_write_vrrp_states_on_reload
    max_auto_priority
    min_auto_priority_delay {int(ha.advert_int * 1_000_000)}
}}

track_file esc_health {{
    file "{health}"
    weight 0
    init_file {TRACK_FAULT}
}}

track_file esc_gateway {{
    file "{gateway}"
    weight 0
    init_file {TRACK_FAULT}
}}

track_file esc_role {{
    file "{role}"
    weight 0
    init_file {TRACK_FAULT}
}}

vrrp_instance {INSTANCE} {{
    state BACKUP
    nopreempt
    interface {ha.kad_vif}
    virtual_router_id {ha.kad_vri}
    priority {priority}
    advert_int {ha.advert_int:g}
    unicast_src_ip {ha.address}
    unicast_peer {{
        {peer}
    }}
    check_unicast_src
    virtual_ipaddress {{
        {ha.kad_vip} dev {ha.kad_vif}
    }}
    track_file {{
        esc_health
        esc_gateway
        esc_role
    }}
    garp_master_delay {GARP_MASTER_DELAY}
    garp_master_repeat {GARP_MASTER_REPEAT}
    garp_master_refresh {GARP_MASTER_REFRESH}
    garp_lower_prio_repeat {GARP_LOWER_PRIO_REPEAT}
    higher_prio_send_advert true
}}
"""


def write_config(ha: HaSettings, node_name: str, paths: KeepalivedPaths) -> Path:
    """Render and write paths.conf (atomically: keepalived never reads half a file)."""
    text = render_config(ha, node_name, paths)
    paths.conf.parent.mkdir(parents=True, exist_ok=True)
    partial = paths.conf.with_name(paths.conf.name + ".new")
    partial.write_text(text)
    partial.chmod(0o644)
    partial.replace(paths.conf)
    return paths.conf


def find_keepalived() -> str:
    """The keepalived binary, else a KeepalivedError saying how to install it."""
    found = shutil.which("keepalived") or next(
        (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise KeepalivedError(
            f"keepalived is not installed: apt-get install {DEBIAN_PACKAGE} (Debian), then "
            "keep the package's own service stopped (systemctl disable --now keepalived): "
            "the node's supervisor runs it"
        )
    return found


def check_config(conf: Path, keepalived: str | None = None) -> None:
    """`keepalived -t`: raise KeepalivedError with keepalived's words if it rejects conf."""
    binary = keepalived or find_keepalived()
    result = subprocess.run(
        [binary, "--config-test", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise KeepalivedError(
            f"keepalived rejects {conf} (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )


def command(paths: KeepalivedPaths, keepalived: str | None = None) -> list[str]:
    """The argv that runs this node's keepalived in the foreground, for the supervisor.

    VRRP only (no LVS checker process), its own pid files (two nodes on one machine,
    as in the tests, and a keepalived of the host's own never collide), logs on
    stderr in detail and not to syslog, so they land in the node's log/ with the
    other services'.
    """
    return [
        keepalived or find_keepalived(),
        "--use-file",
        str(paths.conf),
        "--pid",
        str(paths.pidfile),
        "--vrrp_pid",
        str(paths.vrrp_pidfile),
        "--vrrp",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
    ]


def _keepalived_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process is a keepalived (a stale file's pid may be reused)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"keepalived" in cmdline.split(b"\0")[0] else None


def clear_stale_pidfiles(paths: KeepalivedPaths) -> list[Path]:
    """Remove pid files that name no live keepalived of this node: after a crash, a
    fence or a reboot, keepalived finds its old pid file, sees that pid in use (a
    zombie not yet reaped, or the pid given to another process) and exits 0 saying
    "daemon is already running", so the node would never hold the VIP again."""
    removed = []
    for pidfile in (paths.pidfile, paths.vrrp_pidfile):
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        try:
            ours = str(paths.conf).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            ours = False
        if not (ours and _alive(pid)):
            pidfile.unlink(missing_ok=True)
            removed.append(pidfile)
    return removed


def running_pid(paths: KeepalivedPaths) -> int | None:
    """The pid of this node's keepalived (its parent process), None when none runs."""
    return _keepalived_pid(paths.pidfile)


def stop(paths: KeepalivedPaths, timeout: float = 5.0) -> bool:
    """Stop this node's keepalived: SIGTERM, so it releases the VIP and tells the peer
    (a priority-0 advert: the peer takes over at once); SIGKILL after timeout.

    True when it stopped on SIGTERM (or none ran). False when it had to be killed: then
    the VIP may still be on kad_vif (a killed keepalived does not remove it), and the
    caller must remove it (`ip addr del VIP dev IF`) before anything else holds it.
    """
    parent = _keepalived_pid(paths.pidfile)
    child = _keepalived_pid(paths.vrrp_pidfile)
    pids = [pid for pid in (parent, child) if pid is not None]
    if not pids:
        return True
    # The parent stops its VRRP child itself; the child alone is signalled only
    # when its parent is gone.
    _signal(parent if parent is not None else child, signal.SIGTERM)
    if _gone_within(pids, timeout):
        return True
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    # A SIGKILL is delivered asynchronously. A process it is pending for never runs its
    # own code again, so it sends no advert; waiting here is for the callers, who look
    # at what runs once this returns (a busy host may take a while to reap it).
    _gone_within(pids, KILL_WAIT)
    return False


def _gone_within(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class TrackFile:
    """A keepalived track file with weight 0: 0 healthy, anything else FAULT.

    Written atomically (a new file renamed over the old): keepalived re-reads it on
    the inotify event and must never see it empty or half written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def set(self, healthy: bool) -> None:
        value = TRACK_HEALTHY if healthy else TRACK_FAULT
        if self.read() == value:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(f"{value}\n")
        partial.replace(self.path)

    def read(self) -> int | None:
        """The number in the file, None when missing or unreadable."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        return self.read() == TRACK_HEALTHY


def reset_track_files(paths: KeepalivedPaths) -> None:
    """Set the track files to fault: what a node does before it starts keepalived and
    its watches, so a value left from before a reboot never hands it the VIP before its
    checks have run."""
    for path in (paths.health_file, paths.gateway_file, paths.role_file):
        TrackFile(path).set(False)


class NotifyEvent(NamedTuple):
    """One state change of a VRRP instance, as keepalived writes it to the FIFO."""

    instance: str
    state: str  # MASTER, BACKUP, FAULT, STOP, DELETED (also MASTER_RX_LOWER_PRI, ...)
    priority: int


_LINE = re.compile(r'^INSTANCE "(?P<name>[^"]*)" (?P<state>[A-Z_]+) (?P<priority>\d+)$')


def parse_notify_line(line: str) -> NotifyEvent | None:
    """`INSTANCE "ESC" MASTER 254` -> NotifyEvent; None for any other line (GROUP ...)."""
    match = _LINE.match(line.strip())
    if match is None:
        return None
    return NotifyEvent(match["name"], match["state"], int(match["priority"]))


class NotifyFifo:
    """Reads keepalived's notify FIFO: `with NotifyFifo(path) as fifo: fifo.read(timeout)`.

    Creates the FIFO when it is missing (before keepalived starts, so keepalived never
    owns it: keepalived deletes a FIFO it created when it exits). It is opened
    read-write, so the reader never sees an end of file while keepalived restarts, and
    lines written while no one read are kept in the pipe. If the path is replaced (a
    keepalived that did create it exited and a new one made another), the reader
    notices the new inode and reopens.
    """

    # How often a waiting read looks whether the FIFO at the path was replaced.
    RECHECK_INTERVAL = 0.25

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._buffer = b""

    def __enter__(self) -> NotifyFifo:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkfifo(self.path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(self.path.stat().st_mode):
                raise KeepalivedError(
                    f"{self.path} exists and is not a FIFO: remove it, the node recreates it"
                ) from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _replaced(self) -> bool:
        assert self._fd is not None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)

    def read(self, timeout: float | None = None) -> NotifyEvent | None:
        """The next event, or None when none came within timeout (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._from_buffer()
            if event is not None:
                return event
            if self._fd is None:
                self.open()
            wait = self.RECHECK_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            ready, _, _ = select.select([self._fd], [], [], wait)
            if ready:
                try:
                    chunk = os.read(self._fd, 4096)
                except OSError as exc:
                    if exc.errno != errno.EAGAIN:
                        raise
                    chunk = None
                if chunk == b"":  # no writer left (cannot happen while we hold it rw)
                    self.open()
                elif chunk:
                    self._buffer += chunk
            elif self._replaced():
                self.open()

    def _from_buffer(self) -> NotifyEvent | None:
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            event = parse_notify_line(line.decode(errors="replace"))
            if event is not None:
                return event
        return None

    def __iter__(self) -> Iterator[NotifyEvent]:
        while True:
            event = self.read()
            if event is not None:
                yield event
