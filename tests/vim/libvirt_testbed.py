"""What the libvirt driver's tests run on: libvirt's test driver in this process, or a
libvirtd of their own (with virtlogd) serving qemu:///system and test+unix:///default.

The daemons run in mount and network namespaces of their own. In the mount namespace
/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt
are directories of the test: nothing of the machine's libvirt (its networks, its
domains, a system daemon) is seen or changed, and the daemons' sockets are in the
test's directory. The network namespace holds only what a test makes there (a bridge),
so no guest's packet can leave the machine. QEMU runs as root there, so it reads the
test's own (mode 0700) directories.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parents[2]
# What scripts/vim-targets/libvirt builds: a kernel and an initramfs that boot in seconds.
TINY_IMAGE = ROOT / ".venv" / "libvirt-target"
LIBVIRTD = Path("/usr/sbin/libvirtd")
VIRTLOGD = Path("/usr/sbin/virtlogd")
QEMU = Path("/usr/bin/qemu-system-x86_64")
# Where the daemons keep their state, bound over the machine's own in their namespace.
PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


def sdk_missing() -> str | None:
    """Why the driver cannot run here at all (None: it can)."""
    try:
        import libvirt  # noqa: F401
        import pycdlib  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install -e '.[test]' (needs libvirt-dev)"
    if shutil.which("qemu-img") is None:
        return "qemu-img is not installed (Debian: qemu-utils)"
    return None


def daemon_missing() -> str | None:
    """Why a private libvirtd cannot run here (None: it can)."""
    reason = sdk_missing()
    if reason:
        return reason
    for program in (LIBVIRTD, VIRTLOGD, QEMU):
        if not program.exists():
            return f"{program} is missing (Debian: libvirt-daemon-system, qemu-system-x86)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: util-linux)"
    if os.geteuid() != 0:
        return "a private libvirtd for qemu:///system must run as root"
    return None


def tiny_image_missing() -> str | None:
    for name in ("tiny.kernel", "tiny.initrd"):
        if not (TINY_IMAGE / name).is_file():
            return f"{TINY_IMAGE / name} is missing: run scripts/vim-targets/libvirt"
    return None


def make_disk_image(path: Path, size: str = "16M") -> Path:
    """An empty qcow2 image: enough for a domain the test driver only pretends to run."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def untagged_domain_xml(name: str, domain_uuid: str = "") -> str:
    """A domain as another tool makes it: no ESC record in its metadata."""
    return (
        f"<domain type='test'><name>{name}</name><uuid>{domain_uuid or uuid.uuid4()}</uuid>"
        "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
    )


LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{logs}/libvirtd.log"
"""
QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""
VIRTLOGD_CONF = """\
log_outputs = "3:file:{logs}/virtlogd.log"
"""
# Runs in the new mount namespace: binds the private directories, says so, then holds
# the namespace open for the daemons nsenter puts in it.
HOLDER = """\
set -e
{binds}
ip link set lo up
echo bound
exec sleep infinity
"""


class PrivateLibvirtd:
    """virtlogd and libvirtd of this test alone, in a mount namespace of their own."""

    def __init__(self, root: Path, cache: Path | None = None) -> None:
        """`cache`: where libvirt keeps what it probed of QEMU (seconds of work at a
        daemon's first use), when it is to outlive this daemon; else under `root`."""
        self.root = root
        self.cache = cache or root / "cache"
        self.sock = root / "sock"
        self.logs = root / "logs"
        self.holder: subprocess.Popen | None = None
        self.virtlogd: subprocess.Popen | None = None
        self.libvirtd: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.sock / "libvirt-sock"

    def uri(self, driver: str = "qemu:///system") -> str:
        """The URI of `driver` (qemu:///system, test+unix:///default) on this daemon."""
        return f"{driver}?socket={self.socket}"

    def start(self) -> None:
        for name in (*PRIVATE_DIRS, "sock", "logs"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        etc = self.root / "etc"
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(sock=self.sock, logs=self.logs))
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "virtlogd.conf").write_text(VIRTLOGD_CONF.format(logs=self.logs))
        sources = {name: self.root / name for name in PRIVATE_DIRS} | {"cache": self.cache}
        binds = "\n".join(
            f"mkdir -p {target}\nmount --bind {sources[name]} {target}"
            for name, target in PRIVATE_DIRS.items()
        )
        self.holder = subprocess.Popen(
            [
                *("unshare", "--mount", "--net", "--propagation", "private"),
                *("sh", "-c", HOLDER.format(binds=binds)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.holder.stdout.readline() if self.holder.stdout else ""
        if line.strip() != "bound":
            self.holder.kill()
            raise AssertionError(f"no private mount namespace: {self.holder.stderr.read()}")
        self.virtlogd = self._in_namespace(VIRTLOGD, "virtlogd")
        self.start_libvirtd()

    def run(self, *command: str) -> str:
        """Run `command` in the daemons' namespaces (e.g. ip, to make a bridge)."""
        assert self.holder is not None
        result = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
        return result.stdout

    def _in_namespace(self, program: Path, name: str) -> subprocess.Popen:
        assert self.holder is not None
        pid_file = self.root / "run" / f"{name}.pid"
        return subprocess.Popen(
            [
                *("nsenter", "-t", str(self.holder.pid), "-m", "-n", "--"),
                *(str(program), "-p", str(pid_file)),
            ],
            stdout=(self.logs / f"{name}.out").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_libvirtd(self, timeout: float = 30) -> None:
        import libvirt

        self.libvirtd = self._in_namespace(LIBVIRTD, "libvirtd")
        deadline = time.monotonic() + timeout
        while True:
            if self.libvirtd.poll() is not None:
                raise AssertionError(f"libvirtd exited {self.libvirtd.returncode}: {self.log()}")
            if self.socket.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt.open(self.uri("test+unix:///default")).close()
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"libvirtd did not answer within {timeout} s: {self.log()}")
            time.sleep(0.05)

    def stop_libvirtd(self) -> None:
        """libvirtd alone, as when it crashes or restarts (its QEMU guests run on)."""
        if self.libvirtd is not None and self.libvirtd.poll() is None:
            self.libvirtd.send_signal(signal.SIGTERM)
            try:
                self.libvirtd.wait(15)
            except subprocess.TimeoutExpired:
                self.libvirtd.kill()
                self.libvirtd.wait(5)

    def qemu_pids(self, domain: str = "*") -> list[int]:
        """The pids of the QEMU processes of `domain` (a name or a pattern) the daemon ran."""
        pids = []
        for pid_file in (self.root / "run" / "qemu").glob(f"{domain}.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        return pids

    def stop(self) -> None:
        self.stop_libvirtd()
        # Guests the tests left (they destroy theirs): by the pids the private daemon recorded.
        for pid in self.qemu_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in (self.virtlogd, self.holder):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def log(self) -> str:
        path = self.logs / "libvirtd.log"
        return path.read_text()[-3000:] if path.exists() else "(no log)"


@contextlib.contextmanager
def private_daemon(root: Path, bridges: dict[str, str]) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd (qemu:///system) whose namespace has each bridge NAME with its
    address (`{"escbr70": "198.18.70.1/24"}`) and, for each bridge's network, a route
    `unreachable` (a fallback: nothing for it ever leaves); every domain it holds is
    destroyed and undefined, and the daemon stopped, after."""
    import libvirt

    # What libvirt probes of QEMU at first use (seconds of it) is kept for the next run.
    daemon = PrivateLibvirtd(root, TINY_IMAGE / "libvirt-cache")
    daemon.start()
    try:
        for bridge, address in bridges.items():
            network = ipaddress.ip_interface(address).network
            daemon.run("ip", "link", "add", bridge, "type", "bridge")
            daemon.run("ip", "addr", "add", address, "dev", bridge)
            daemon.run("ip", "link", "set", bridge, "up")
            daemon.run("ip", "route", "add", "unreachable", str(network), "metric", "4000")
        yield daemon
    finally:
        try:
            connection = libvirt.open(daemon.uri())
            for dom in connection.listAllDomains(0):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            connection.close()
        finally:
            daemon.stop()
