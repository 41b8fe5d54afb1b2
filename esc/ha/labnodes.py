"""The lab's node VMs: ESC nodes the lab's host agent (esc.ha.labhost) deploys on its
own host, each a network namespace running a release's wheel, as a VIM runs a VM.

A node NAME is made of the host's parts:
- its machine: the network namespace NAME, whose `eth0` (a veth; its other end,
  `nv<hash>`, is a port of the agent's --bridge) holds the node's address, with its
  default route via the gateway;
- its disk: the directory NAME of --nodes-dir, mode 0711 (PostgreSQL's user crosses
  it to an HA node's data): a venv holding the release's wheel (image `esc-1.2.0.1`
  is `esc-1.2.0.1-py3-none-any.whl` of --releases), the image's first-boot program
  (esc.node.firstboot, copied), the day-0 files in `day0/` (mode 0600), and the node
  home `home/`;
- its boot: the first-boot program run inside the namespace, as an image's first-boot
  service runs it: `escadm init` from the day-0 at the first boot, then `escadm start`;
  its output is appended to `boot.log`.

The venv holds the release's wheel alone; its dependencies are the agent's own
environment's (a .pth file names the agent's site-packages, read-only), so a deploy
needs no package index and takes seconds: creating the venv and installing the wheel
took 1.1 s on an idle 2-core machine and 5 s on a loaded one, where a venv with its
own pip took 20 s. An old
release thus runs with today's dependencies, as the upgrade tests run old releases.
A node's processes get a clean environment (PATH with its venv first, HOME its
directory): nothing of the agent's, its token least of all.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from esc.ha.provider import NodeSpec, NodeSpecError, PermanentProviderError
from esc.node import firstboot
from esc.service import UsageError

log = logging.getLogger("esc.ha.labhost")

NETNS_DIR = Path("/run/netns")
WHEEL_SUFFIX = "-py3-none-any.whl"
IMAGE_PREFIX = "esc-"
BOOT_LOG = "boot.log"
# Seconds: making the venv and installing the wheel; a first boot (an HA node's init
# runs initdb and the migrations, then escadm start waits for the API).
INSTALL_BOUND = 300.0
FIRST_BOOT_BOUND = 900.0
LINK_UP_BOUND = 5.0
# A namespace's name is the node's; interface names derive from it (at most 15 bytes).
_NAME = re.compile(r"[a-z][a-z0-9-]{0,13}[a-z0-9]\Z")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ip_command(argv: list[str]) -> str:
    """Run `ip ARGV`; a failure is permanent for this request and names the command."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise PermanentProviderError(
            f"`ip {' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def images(releases: Path) -> dict[str, Path]:
    """The images of the lab: each release wheel of `releases`, by `esc-VERSION`."""
    return {
        wheel.name.removesuffix(WHEEL_SUFFIX): wheel
        for wheel in sorted(releases.glob(f"{IMAGE_PREFIX}*{WHEEL_SUFFIX}"))
    }


def veth_name(node: str) -> str:
    """The root side of node `node`'s link: short and unique whatever the name's length."""
    return "nv" + hashlib.sha256(node.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Bridge:
    name: str
    address: ipaddress.IPv4Interface  # the host's (the nodes' default gateway)


def read_bridge(name: str) -> Bridge:
    """The bridge `name` of the root namespace with its IPv4 address."""
    result = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", name], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise UsageError(
            f"--bridge {name}: no such link ({result.stderr.strip()}); create it first "
            f"(ip link add {name} type bridge, with the nodes' gateway address on it)"
        )
    for entry in json.loads(result.stdout or "[]"):
        for info in entry.get("addr_info", []):
            return Bridge(name, ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
    raise UsageError(
        f"--bridge {name} has no IPv4 address: give it the nodes' gateway address "
        f"(ip addr add 198.18.0.1/24 dev {name})"
    )


@dataclass(frozen=True)
class Machine:
    """One deployed node: its namespace, its link, its directory."""

    name: str
    directory: Path
    address: ipaddress.IPv4Interface
    gateway: str
    bridge: str

    @property
    def veth(self) -> str:
        return veth_name(self.name)

    @property
    def venv(self) -> Path:
        return self.directory / "venv"

    @property
    def home(self) -> Path:
        return self.directory / "home"

    @property
    def day0_dir(self) -> Path:
        return self.directory / "day0"

    @property
    def firstboot(self) -> Path:
        return self.directory / "firstboot.py"

    @property
    def boot_log(self) -> Path:
        return self.directory / BOOT_LOG

    # making it ----------------------------------------------------------------------------

    def create_namespace(self) -> None:
        """The namespace and its link on the bridge, up, with the address and route."""
        ns = self.name
        ip_command(["netns", "add", ns])
        ip_command(["link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        ip_command(["link", "set", self.veth, "master", self.bridge, "up"])
        ip_command(["-n", ns, "addr", "add", str(self.address), "dev", "eth0"])
        ip_command(["-n", ns, "link", "set", "lo", "up"])
        ip_command(["-n", ns, "link", "set", "eth0", "up"])
        deadline = time.monotonic() + LINK_UP_BOUND
        while "state UP" not in ip_command(["-n", ns, "link", "show", "eth0"]):
            if time.monotonic() > deadline:
                raise PermanentProviderError(
                    f"eth0 of node {ns} did not come up within {LINK_UP_BOUND:g} s"
                )
            time.sleep(0.02)
        # On a loaded host the kernel may not take a route via the new link at once
        # ("Nexthop has invalid gateway") even once it is UP: asked again, it does.
        while True:
            try:
                ip_command(["-n", ns, "route", "add", "default", "via", self.gateway])
                return
            except PermanentProviderError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def install(self, wheel: Path) -> None:
        """The node's disk: a venv with the wheel, the image's first-boot program."""
        self.directory.mkdir(mode=0o711)
        self.directory.chmod(0o711)  # whatever the umask
        install_release(self.venv, wheel)
        shutil.copyfile(firstboot.__file__, self.firstboot)

    def write_day0(self, files: dict[str, str]) -> None:
        self.day0_dir.mkdir(mode=0o700)
        for name, text in files.items():
            fd = os.open(self.day0_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)

    # booting it ---------------------------------------------------------------------------

    def _boot_command(self) -> list[str]:
        return [
            *("ip", "netns", "exec", self.name),
            str(self.venv / "bin" / "python"),
            str(self.firstboot),
            *("--day0-dir", str(self.day0_dir), "--home", str(self.home)),
            *("--escadm", str(self.venv / "bin" / "escadm"), "--start"),
        ]

    def _boot(self) -> subprocess.Popen:
        log = self.boot_log.open("ab")
        try:
            return subprocess.Popen(
                self._boot_command(),
                cwd=self.directory,
                env={"PATH": f"{self.venv / 'bin'}:{PATH}", "HOME": str(self.directory)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def first_boot(self) -> None:
        """Boot it and wait: its escadm init from the day-0, then escadm start."""
        boot = self._boot()
        try:
            code = boot.wait(FIRST_BOOT_BOUND)
        except subprocess.TimeoutExpired:
            boot.kill()
            boot.wait()
            raise PermanentProviderError(
                f"the first boot of node {self.name} did not end within "
                f"{FIRST_BOOT_BOUND:g} s: {self.boot_tail()}"
            ) from None
        if code != 0:
            raise PermanentProviderError(
                f"the first boot of node {self.name} exited {code}: {self.boot_tail()}"
            )

    def boot(self) -> None:
        """Boot it as after a power-on (escadm start; init only if it never ran), not
        waiting: a VM is on once it boots, whatever its services do.

        The node home's run/ is its volatile state, /run on a VM, which a reboot
        empties: it is emptied here too, so that the node's services find what they
        find after a reboot (a role record from before it counts as none there, as
        one written before the host booted does), not after a restart of themselves."""
        run = self.home / "run"
        for entry in run.iterdir() if run.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        boot = self._boot()
        threading.Thread(target=boot.wait, daemon=True, name=f"boot-{self.name}").start()

    def boot_tail(self, lines: int = 12) -> str:
        try:
            text = self.boot_log.read_text(errors="replace")
        except OSError:
            return "(no boot log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty boot log)"

    # removing it --------------------------------------------------------------------------

    def remove(self) -> None:
        """Its link, its namespace and its directory; what is not there is not an error.
        The link first: a namespace that still holds a socket outlives `ip netns del`."""
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def install_release(venv: Path, wheel: Path) -> None:
    """A venv holding the release `wheel` alone, its dependencies this environment's
    (read through a .pth file): what a lab node runs."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "make its venv")
    (site,) = venv.glob("lib/python3*/site-packages")
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "esc-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    pip += ["install", "--quiet", "--no-deps", "--no-index", "--disable-pip-version-check"]
    _run([*pip, str(wheel)], f"install {wheel.name} into its venv")


def _run(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_BOUND)
    except subprocess.TimeoutExpired:
        raise PermanentProviderError(f"could not {what} within {INSTALL_BOUND:g} s") from None
    if result.returncode != 0:
        raise PermanentProviderError(
            f"could not {what}: {' '.join(argv[:4])} ... exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-1000:]}"
        )


class NodeMachines:
    """Where the agent makes nodes: the bridge, the nodes' directories, the images."""

    def __init__(self, bridge: str, directory: Path, releases: Path) -> None:
        self.bridge = read_bridge(bridge)
        self.directory = directory.absolute()
        self.releases = releases.absolute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.directory.chmod(0o711)
        except OSError as exc:
            raise UsageError(f"--nodes-dir {directory}: {exc.strerror}") from None
        if not images(self.releases):
            raise UsageError(
                f"--releases {releases} holds no release wheel ({IMAGE_PREFIX}VERSION"
                f"{WHEEL_SUFFIX}): give the directory of the kept releases"
            )

    def wheel(self, image: str) -> Path:
        found = images(self.releases)
        if image not in found:
            raise PermanentProviderError(
                f"unknown image {image!r}; the lab's images are {', '.join(found)} (the "
                f"release wheels of {self.releases})"
            )
        return found[image]

    def machine(self, spec: NodeSpec, taken_names: set[str], taken_addresses: set[str]) -> Machine:
        """The machine of `spec` on this host; refuses what the lab cannot give a node."""
        spec.check()
        if not _NAME.match(spec.name):
            raise NodeSpecError(
                f"node name {spec.name!r}: a lab node is a network namespace: use 2 to 15 "
                "lowercase letters, digits and '-', starting with a letter"
            )
        if spec.name in taken_names or (NETNS_DIR / spec.name).exists():
            raise PermanentProviderError(
                f"a network namespace {spec.name} exists already on the lab's host: name "
                "the node otherwise"
            )
        if spec.floating_ip:
            raise PermanentProviderError(
                "the lab has no floating IPs: its nodes are reached at their own address"
            )
        if spec.flavor:
            raise PermanentProviderError(
                f"the lab's nodes have no flavor ({spec.flavor!r}): a namespace has the "
                "host's CPUs and memory; leave the flavor out"
            )
        bridge = self.bridge
        if spec.network not in ("", bridge.name):
            raise PermanentProviderError(
                f"unknown network {spec.network!r}; the lab's network is {bridge.name} (its "
                "bridge), or leave the network out"
            )
        if not spec.ip:
            raise NodeSpecError(
                f"give the node's ip: a lab node has a fixed address in {bridge.address.network}"
            )
        text = spec.ip if "/" in spec.ip else f"{spec.ip}/{bridge.address.network.prefixlen}"
        address = ipaddress.IPv4Interface(text)
        if address.network != bridge.address.network or address.ip == bridge.address.ip:
            raise NodeSpecError(
                f"ip {spec.ip}: a lab node's address is in {bridge.address.network} (the "
                f"bridge {bridge.name}), other than the bridge's own {bridge.address.ip}"
            )
        if str(address.ip) in taken_addresses:
            raise PermanentProviderError(f"ip {address.ip} is another node's already")
        gateway = spec.gateway_ip or str(bridge.address.ip)
        if ipaddress.IPv4Address(gateway) not in bridge.address.network:
            raise NodeSpecError(f"gateway_ip {gateway} is not in {bridge.address.network}")
        self.wheel(spec.image)
        return Machine(spec.name, self.directory / spec.name, address, gateway, bridge.name)

    def build(self, machine: Machine, spec: NodeSpec) -> None:
        """Make the node and boot it for the first time. A step that fails raises naming
        it; what was made stays (a node in ERROR, its boot log kept) until it is deleted."""
        steps = (
            ("namespace", machine.create_namespace),
            ("install", lambda: machine.install(self.wheel(spec.image))),
            ("day-0", lambda: machine.write_day0(spec.day0_config())),
            ("first boot", machine.first_boot),
        )
        took = []
        for what, step in steps:
            started = time.monotonic()
            step()
            took.append(f"{what} {time.monotonic() - started:.1f} s")
        log.info("node %s made: %s", machine.name, ", ".join(took))
