"""ESC's own node VMs on libvirt, through the VIM node provider: on libvirt's test driver
(test:///default, in this process) the whole life of a node, its witness record in
the domain's metadata, and the upgrade's replacement of a node by the same node made
from another image; on a real qemu:///system (a private libvirtd, the tiny image of
scripts/vim-targets/libvirt) a node VM whose NIC is on a bridge of 198.18.71.0/24,
answering HTTP on its fixed address until it is fenced, and again once redeployed or
replaced.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from lxml import etree

from esc.ha.provider import NodeSpec, UnknownNode
from esc.ha.providers.vim import NODE_CONTROLLER, VimNodeProvider
from esc.node.firstboot import DAY0_FILE, PAIR_FILE, init_argv
from esc.upgrade.node_replace import recorded_parameters, replace_node
from esc.vim.base import InstanceState
from esc.vim.libvirt_domain import NAMESPACE

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
DOMAIN = "esc-esc-n1"
PAIR = '{"kind": "esc-ha-pair", "secret": "s3cr3t"}'


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


def disk_of(dom: Any) -> Path:
    """The file of the domain's first disk, as libvirt's definition names it."""
    tree = etree.fromstring(dom.XMLDesc(0).encode())
    (source,) = tree.xpath("devices/disk[@device='disk']/source/@file")
    return Path(source)


def seed_of(dom: Any) -> dict[str, str]:
    """The files of the cloud-init seed on the domain's CD-ROM, as the guest reads them."""
    import pycdlib

    tree = etree.fromstring(dom.XMLDesc(0).encode())
    (source,) = tree.xpath("devices/disk[@device='cdrom']/source/@file")
    iso = pycdlib.PyCdlib()
    iso.open(source)
    try:
        files = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode()
            if name not in (".", ".."):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
                files[name] = out.getvalue().decode()
        return files
    finally:
        iso.close()


def backing_file(path: Path) -> Path:
    """The image a qcow2 overlay is on, as qemu-img reads it from the file."""
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(info.stdout)["backing-filename"])


def recorded_in(dom: Any) -> dict:
    """The node's parameters as the domain's ESC record holds them."""
    tree = etree.fromstring(dom.XMLDesc(0).encode())
    (text,) = tree.xpath(
        "metadata/esc:instance/esc:meta[@key='node']/text()", namespaces={"esc": NAMESPACE}
    )
    return json.loads(text)


def test_the_upgrade_replaces_a_node_vm_on_libvirt_by_one_of_the_other_image(
    test_driver: Path, tmp_path: Path
) -> None:
    import libvirt

    make_disk_image(test_driver / "tiny-b.qcow2")  # the new release's image, beside the old
    nodes = provider(TEST_URI, test_driver, tmp_path / "a", shutdown_timeout=1)
    nodes.deploy(SPEC)
    recorded = recorded_parameters(nodes, "esc-n1")
    assert recorded == SPEC.parameters() and recorded["joins_pair"] is False
    connection = libvirt.open(TEST_URI)
    try:
        old = connection.lookupByName(DOMAIN)
        old_id, old_disk = old.ID(), disk_of(old)
        assert backing_file(old_disk) == test_driver / "tiny.qcow2"
        # Held open: whether the overlay's file is unlinked is then known for certain.
        old_overlay = os.open(old_disk, os.O_RDONLY)
        try:
            lines: list[str] = []
            started = time.monotonic()
            replaced = replace_node(
                provider(TEST_URI, test_driver, tmp_path / "b", shutdown_timeout=1),
                "esc-n1",
                recorded,
                "tiny-b",
                PAIR,
                lines.append,
            )
            seconds = time.monotonic() - started
            assert os.fstat(old_overlay).st_nlink == 0  # the old disk removed
        finally:
            os.close(old_overlay)
        assert (replaced.state, replaced.image, replaced.ip) == (
            InstanceState.RUNNING,
            "tiny-b",
            f"{NET}.10",
        )
        assert [line.split(": ", 1)[1] for line in lines] == [
            "orderly shutdown (up to 60 s)",
            "deleting it with its disks",
            "deploying it from tiny-b",
        ]

        # What libvirt holds: the domain that ran is gone; one domain of the node's name
        # runs, its disk a new overlay on the other image, its NIC on the same bridge
        # with the same fixed address in its seed, its record the new parameters; the
        # pair file beside the day-0 on its CD.
        with pytest.raises(libvirt.libvirtError, match="Domain not found"):
            connection.lookupByID(old_id)
        assert sorted(d.name() for d in connection.listAllDomains(0)) == [DOMAIN, "test"]
        new = connection.lookupByName(DOMAIN)
        assert new.ID() != old_id and new.isActive()
        assert f"<source bridge='{BRIDGE}'/>" in new.XMLDesc(0)
        new_disk = disk_of(new)
        assert backing_file(new_disk) == test_driver / "tiny-b.qcow2"
        assert (test_driver / "tiny.qcow2").is_file()  # an image is never removed
        after = recorded_in(new)
        assert after == {**SPEC.parameters(), "image": "tiny-b", "joins_pair": True}
        assert recorded_parameters(nodes, "esc-n1") == after
        seed = seed_of(new)
        assert yaml.safe_load(seed["network-config"])["ethernets"]["eth0"]["addresses"] == [
            f"{NET}.10/24"
        ]
        files = {f["path"]: f for f in yaml.safe_load(seed["user-data"])["write_files"]}
        assert files[f"/etc/esc/day0/{PAIR_FILE}"]["content"] == PAIR
        argv = init_argv(
            tomllib.loads(files[f"/etc/esc/day0/{DAY0_FILE}"]["content"]), Path("/etc/esc/day0")
        )
        assert argv[argv.index("--ha-pair-file") + 1] == f"/etc/esc/day0/{PAIR_FILE}"

        # Asked again: the same domain runs on, on the same disk; nothing is redefined.
        new_id, new_inode = new.ID(), new_disk.stat().st_ino
        again = replace_node(nodes, "esc-n1", recorded, "tiny-b", PAIR)
        assert again == replaced
        assert connection.lookupByName(DOMAIN).ID() == new_id
        assert disk_of(new) == new_disk and new_disk.stat().st_ino == new_inode
        nodes.delete("esc-n1")
    finally:
        connection.close()
    print(f"\nnode VM replaced on libvirt's test driver in {seconds:.2f} s")


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


def test_a_node_vm_replaced_from_another_image_answers_again_on_its_address(
    daemon: PrivateLibvirtd, tmp_path: Path
) -> None:
    # Two images in the host's image directory: the old release's and the new one's (the
    # same tiny kernel, the new one's command line saying which it is).
    images = tmp_path / "images"
    images.mkdir()
    for image in ("tiny", "tiny-b"):
        for suffix in ("kernel", "initrd"):
            (images / f"{image}.{suffix}").symlink_to(TINY_IMAGE / f"tiny.{suffix}")
        (images / f"{image}.cmdline").write_text(
            f"console=ttyS0 panic=-1 quiet esc.image={image}\n"
        )
    nodes = provider(daemon.uri(), images, tmp_path / "vim", domain_type="qemu")
    nodes.deploy(SPEC)
    wait_answer(daemon, nodes, f"{NET}.10")
    recorded = recorded_parameters(nodes, "esc-n1")
    (old_pid,) = daemon.qemu_pids(DOMAIN)
    # libvirt's log of the domain's QEMU runs (this module's earlier ones too): from here on.
    qemu_log = daemon.root / "log" / "qemu" / f"{DOMAIN}.log"
    logged = qemu_log.stat().st_size

    started = time.monotonic()
    replaced = replace_node(nodes, "esc-n1", recorded, "tiny-b", PAIR)
    replacing = time.monotonic() - started
    assert (replaced.state, replaced.image, replaced.ip) == (
        InstanceState.RUNNING,
        "tiny-b",
        f"{NET}.10",
    )
    answering = wait_answer(daemon, nodes, f"{NET}.10") + replacing

    # What the host runs: the old guest shut itself down when asked (libvirt logged it so,
    # not as destroyed) and its QEMU is gone; a new QEMU boots the other image's kernel
    # and command line; the guest read the pair file from its new seed.
    assert not Path(f"/proc/{old_pid}").exists()
    log = qemu_log.read_bytes()[logged:].decode(errors="replace")
    assert "shutting down, reason=shutdown" in log and "reason=destroyed" not in log
    (pid,) = daemon.qemu_pids(DOMAIN)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[argv.index("-kernel") + 1] == str(images / "tiny-b.kernel")
    assert "esc.image=tiny-b" in argv[argv.index("-append") + 1]
    text = console(nodes).replace("\r\n", "\n")
    found = re.search(r"ESC-USER-DATA-BEGIN\n(.*?)ESC-USER-DATA-END", text, re.S)
    assert found, text[-2000:]
    written = {f["path"]: f["content"] for f in yaml.safe_load(found.group(1))["write_files"]}
    assert written[f"/etc/esc/day0/{PAIR_FILE}"] == PAIR

    # Asked again: the guest runs on, untouched.
    assert replace_node(nodes, "esc-n1", recorded, "tiny-b", PAIR) == replaced
    assert daemon.qemu_pids(DOMAIN) == [pid] and Path(f"/proc/{pid}").exists()
    assert answers(daemon, f"{NET}.10") == "ESC-NODE esc-n1"
    nodes.delete("esc-n1")
    print(
        f"\nnode VM replaced on QEMU in {replacing:.1f} s (orderly shutdown, delete, define, "
        f"start), answering {answering:.1f} s after the replacement began"
    )
