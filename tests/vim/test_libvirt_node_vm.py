"""ESC's own node VMs on libvirt, through the VIM node provider: on libvirt's test driver
(test:///default, in this process) the whole life of a node and its witness record in
the domain's metadata; on a real qemu:///system (a private libvirtd, the tiny image of
scripts/vim-targets/libvirt) a node VM whose NIC is on a bridge of 198.18.71.0/24,
answering HTTP on its fixed address until it is fenced, and again once redeployed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import need
from libvirt_testbed import (
    TINY_IMAGE,
    PrivateLibvirtd,
    daemon_missing,
    make_disk_image,
    private_daemon,
    sdk_missing,
    tiny_image_missing,
)

from esc.ha.provider import NodeSpec, UnknownNode
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import DAY0_FILE, init_argv
from esc.vim.base import InstanceState

BRIDGE = "escbr71"
NET = "198.18.71"
SPEC = NodeSpec(
    name="esc-n1",
    image="tiny",
    flavor="tiny",
    network=f"bridge:{BRIDGE}",
    ip=f"{NET}.10/24",
    gateway_ip=f"{NET}.1",
    ha_node_list=(f"{NET}.10", f"{NET}.11"),
    kad_vip=f"{NET}.100/24",
    kad_vif="eth0",
)
TEST_URI = "test:///default"


def provider(uri: str, images: Path, data: Path, **settings: object) -> VimNodeProvider:
    from esc.config import LibvirtFlavor, LibvirtSettings
    from esc.vim.libvirt import LibvirtVim

    values: dict = {
        "uri": uri,
        "image_dir": str(images),
        "flavors": {"tiny": LibvirtFlavor(vcpus=1, memory_mib=256)},
        "shutdown_timeout": 20,
        "create_timeout": 30,
    }
    values.update(settings)
    return VimNodeProvider(LibvirtVim(data, LibvirtSettings(**values), data), "the libvirt host")


# libvirt's test driver ------------------------------------------------------------------


@pytest.fixture
def test_driver(tmp_path: Path) -> Iterator[Path]:
    """The test driver's domains live while one connection is open: this one, for the
    test; the images directory with a qcow2 image `tiny`."""
    need(sdk_missing())
    import libvirt

    observer = libvirt.open(TEST_URI)
    images = tmp_path / "images"
    images.mkdir()
    make_disk_image(images / "tiny.qcow2")
    yield images
    observer.close()


def test_a_node_vm_on_libvirt_from_deploy_to_redeploy(test_driver: Path, tmp_path: Path) -> None:
    import libvirt

    from esc.vim.libvirt import LibvirtVim

    nodes = provider(TEST_URI, test_driver, tmp_path / "a", shutdown_timeout=1)
    deployed = nodes.deploy(SPEC)
    assert (deployed.name, deployed.state, deployed.ip) == ("esc-n1", "RUNNING", f"{NET}.10")

    # What libvirt holds: a domain tagged as ESC's nodes, its NIC on the bridge, the
    # deploy's parameters in its ESC record; a controller on this host sees none of it.
    connection = libvirt.open(TEST_URI)
    try:
        (dom,) = [d for d in connection.listAllDomains(0) if d.name() == "esc-esc-n1"]
        xml = dom.XMLDesc(0)
        assert f"<source bridge='{BRIDGE}'/>" in xml
        assert f'<esc:tag key="esc-controller">{NODE_CONTROLLER}</esc:tag>' in xml
        assert '<esc:meta key="node">' in xml
        controller = LibvirtVim(tmp_path / "ctl", nodes.driver.settings, tmp_path)
        controller.controller_id = f"ctl-{uuid.uuid4().hex[:8]}"
        assert controller.list_instances() == []

        # Another host's provider shows it alike; by name or by address.
        other = provider(TEST_URI, test_driver, tmp_path / "b")
        assert other.show("esc-n1") == deployed == other.show(f"{NET}.10")

        # Fenced: destroyed at once (libvirt's reason says so), found by its address.
        other.fence(f"{NET}.10")
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]
        other.fence(f"{NET}.10")  # fencing a fenced node: no error
        assert nodes.show("esc-n1").state is InstanceState.STOPPED

        # The witness record, in the domain's metadata: both providers read it.
        nodes.mark_outdated(f"{NET}.10", "it stopped streaming")
        assert other.outdated(f"{NET}.10") == "it stopped streaming"
        assert '<esc:meta key="outdated">' in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        other.clear_outdated(f"{NET}.10")
        assert nodes.outdated(f"{NET}.10") is None

        nodes.power_on("esc-n1")
        nodes.power_off("esc-n1", grace=1)  # a graceful stop, then off
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]

        nodes.delete("esc-n1")
        with pytest.raises(UnknownNode, match="no node esc-n1 on the libvirt host"):
            nodes.show("esc-n1")
        with pytest.raises(UnknownNode):
            nodes.fence(f"{NET}.10")
        assert [d.name() for d in connection.listAllDomains(0)] == ["test"]

        again = other.deploy(SPEC)
        assert (again.name, again.state, again.ip) == ("esc-n1", "RUNNING", f"{NET}.10")
        assert again.parameters == deployed.parameters
        other.delete("esc-n1")
    finally:
        connection.close()


# a real QEMU guest ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    need(daemon_missing())
    need(tiny_image_missing())
    with private_daemon(tmp_path_factory.mktemp("libvirtd"), {BRIDGE: f"{NET}.1/24"}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    for suffix in ("kernel", "initrd"):
        (directory / f"tiny.{suffix}").symlink_to(TINY_IMAGE / f"tiny.{suffix}")
    (directory / "tiny.cmdline").write_text("console=ttyS0 panic=-1 quiet\n")
    return directory


def answers(daemon: PrivateLibvirtd, address: str) -> str | None:
    """What the guest's HTTP server says on `address`, from the bridge's side; None when
    nothing answers within 2 s."""
    assert daemon.holder is not None
    fetch = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())"
    )
    done = subprocess.run(
        [
            *("nsenter", "-t", str(daemon.holder.pid), "-n", "--"),
            *(sys.executable, "-c", fetch, f"http://{address}/"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def wait_answer(
    daemon: PrivateLibvirtd, nodes: VimNodeProvider, address: str, timeout: float = 90
) -> float:
    started = time.monotonic()
    # Its console says when its server is up: each probe costs a Python start-up.
    while "ESC-BOOT-OK" not in console(nodes) and time.monotonic() - started < timeout:
        time.sleep(0.2)
    while answers(daemon, address) != "ESC-NODE esc-n1":
        assert time.monotonic() - started < timeout, (
            f"{address} did not answer in {timeout} s; console:\n{console(nodes)[-3000:]}"
        )
        time.sleep(0.3)
    return time.monotonic() - started


def console(nodes: VimNodeProvider) -> str:
    path = nodes.driver.files.of("esc-n1") / "console.log"  # type: ignore[attr-defined]
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_node_vm_answers_on_its_address_until_fenced_and_again_once_redeployed(
    daemon: PrivateLibvirtd, images: Path, tmp_path: Path
) -> None:
    nodes = provider(daemon.uri(), images, tmp_path / "vim", domain_type="qemu")
    started = time.monotonic()
    assert nodes.deploy(SPEC).state is InstanceState.RUNNING
    first = wait_answer(daemon, nodes, f"{NET}.10") + time.monotonic() - started

    # The guest got its day-0 from the seed: the escadm init of its first boot.
    text = console(nodes).replace("\r\n", "\n")
    assert f"ESC-NET-UP {NET}.10/24" in text
    found = re.search(r"ESC-USER-DATA-BEGIN\n(.*?)ESC-USER-DATA-END", text, re.S)
    assert found, text[-2000:]
    (day0,) = yaml.safe_load(found.group(1))["write_files"]
    assert day0["path"] == f"/etc/esc/day0/{DAY0_FILE}"
    assert init_argv(tomllib.loads(day0["content"]), Path("/etc/esc/day0"))[:4] == [
        *("--node-name", "esc-n1", "--ha", "--ha-node-list"),
    ]

    (pid,) = daemon.qemu_pids("esc-esc-n1")
    fenced = time.monotonic()
    nodes.fence(f"{NET}.10")
    fence_seconds = time.monotonic() - fenced
    assert fence_seconds < 5  # no graceful stop waited for (shutdown_timeout is 20 s)
    assert answers(daemon, f"{NET}.10") is None
    assert daemon.qemu_pids("esc-esc-n1") in ([], [pid]) and not Path(f"/proc/{pid}").exists()
    nodes.fence(f"{NET}.10")

    nodes.delete("esc-n1")
    started = time.monotonic()
    again = nodes.deploy(SPEC)
    assert (again.name, again.ip) == ("esc-n1", f"{NET}.10")
    second = wait_answer(daemon, nodes, f"{NET}.10") + time.monotonic() - started
    nodes.delete("esc-n1")
    print(
        f"\nnode VM answering {first:.1f} s after its deploy, fenced in {fence_seconds:.2f} s, "
        f"answering {second:.1f} s after its redeploy"
    )
