"""The libvirt driver on a real qemu:///system: a private libvirtd (tests/vim/libvirt_testbed)
runs QEMU in software emulation, booting the tiny kernel + initramfs image that
scripts/vim-targets/libvirt builds. Its init prints the cloud-init seed it finds on
its CD-ROM to the serial console, so the console shows what reached the guest.

The VM's NIC is on a bridge of the daemon's own network namespace (198.18.70.0/24,
with an unreachable fallback route): nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import need
from libvirt_testbed import (
    TINY_IMAGE,
    PrivateLibvirtd,
    daemon_missing,
    make_disk_image,
    private_daemon,
    tiny_image_missing,
)

from esc.vim.base import (
    InstanceState,
    Interface,
    PermanentVimError,
    TransientVimError,
    VmSpec,
    Volume,
)

BRIDGE = "escbr70"
VM_IP = "198.18.70.10/24"
BOOTED = "ESC-BOOT-OK"
DAY0 = {"app.conf": "greeting = hello from day 0\nanswer = 42\n"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    need(daemon_missing())
    need(tiny_image_missing())
    with private_daemon(tmp_path_factory.mktemp("libvirtd"), {BRIDGE: "198.18.70.1/24"}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    for suffix in ("kernel", "initrd"):
        (directory / f"tiny.{suffix}").symlink_to(TINY_IMAGE / f"tiny.{suffix}")
        # The same kernel deaf to the power button: a guest that ignores a shutdown request.
        (directory / f"deaf.{suffix}").symlink_to(TINY_IMAGE / f"tiny.{suffix}")
    (directory / "tiny.cmdline").write_text("console=ttyS0 panic=-1 quiet\n")
    (directory / "deaf.cmdline").write_text("console=ttyS0 panic=-1 quiet acpi=off\n")
    # A root disk besides the kernel: QEMU opens the VM's overlay and its backing file.
    make_disk_image(directory / "tiny.qcow2")
    return directory


def make_vim(daemon: PrivateLibvirtd, images: Path, data: Path, **settings: object):
    from esc.config import LibvirtFlavor, LibvirtSettings
    from esc.vim.libvirt import LibvirtVim

    values: dict = {
        "uri": daemon.uri(),
        "domain_type": "qemu",
        "image_dir": str(images),
        "flavors": {"tiny": LibvirtFlavor(vcpus=1, memory_mib=256)},
        "shutdown_timeout": 20,
        "create_timeout": 30,
    }
    values.update(settings)
    return LibvirtVim(data, LibvirtSettings(**values), data)


def console(vim, vm_id: str) -> str:
    path = vim.files.of(vm_id) / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_console(vim, vm_id: str, marker: str, count: int = 1, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console(vim, vm_id)
        if text.count(marker) >= count:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} (x{count}) within {timeout} s:\n{text[-2000:]}")
        time.sleep(0.1)


def between(text: str, name: str) -> str:
    found = re.search(rf"ESC-{name}-BEGIN\r?\n(.*?)ESC-{name}-END", text, re.S)
    assert found, f"no {name} on the console:\n{text[-2000:]}"
    return found.group(1).replace("\r\n", "\n")


def test_a_vm_boots_with_its_day0_and_follows_its_life_cycle(
    daemon: PrivateLibvirtd, images: Path, tmp_path: Path
) -> None:
    import libvirt

    vim = make_vim(daemon, images, tmp_path / "vim")
    vim.check()
    spec = VmSpec(
        "vm-boot",
        "boot test",
        "tiny",
        "tiny",
        DAY0,
        interfaces=(Interface(f"bridge:{BRIDGE}", VM_IP),),
        volumes=(Volume("data", 1),),
    )
    started = time.monotonic()
    created = vim.create_vm(spec)
    assert created.state is InstanceState.RUNNING
    assert (created.address, created.ips) == ("198.18.70.10", ("198.18.70.10",))
    created_seconds = time.monotonic() - started
    text = wait_console(vim, "vm-boot", BOOTED)
    boot_seconds = time.monotonic() - started

    # What reached the guest: the seed labelled cidata, with the day-0 file and the NIC's
    # fixed address for cloud-init.
    assert re.search(r"ESC-SEED-LABEL cidata\s", text)
    user_data = between(text, "USER-DATA")
    assert user_data.startswith("#cloud-config\n")
    (written,) = yaml.safe_load(user_data)["write_files"]
    assert written["path"] == "/etc/esc/day0/app.conf"
    assert written["content"] == DAY0["app.conf"]
    network = yaml.safe_load(between(text, "NETWORK-CONFIG"))
    (nic,) = network["ethernets"].values()
    assert nic["addresses"] == [VM_IP]

    # What libvirt holds: a qemu domain, the NIC on the bridge with the MAC cloud-init
    # matches, the overlay on the image and the data volume, the seed as a CD-ROM.
    connection = libvirt.open(daemon.uri())
    dom = connection.lookupByName("esc-vm-boot")
    xml = dom.XMLDesc(0)
    assert "type='qemu'" in xml
    assert f"<source bridge='{BRIDGE}'/>" in xml
    assert nic["match"]["macaddress"] in xml
    directory = vim.files.of("vm-boot")
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(directory / "disk.qcow2")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(images / "tiny.qcow2") in info
    assert (directory / "volume-data.qcow2").exists()
    connection.close()

    # A reboot is a graceful stop (the guest powers off on the ACPI request, well before
    # the timeout) and a start: another QEMU process, the same console. (Stop, start and
    # their idempotence are the contract suite's, on the test driver.)
    (pid,) = daemon.qemu_pids("esc-vm-boot")
    asked = time.monotonic()
    assert vim.reboot_vm("vm-boot").state is InstanceState.RUNNING
    reboot_seconds = time.monotonic() - asked
    assert reboot_seconds < 15
    assert "reboot: Power down" in console(vim, "vm-boot")
    assert daemon.qemu_pids("esc-vm-boot") not in ([], [pid])

    vim.delete_vm("vm-boot")
    assert vim.status("vm-boot").state is InstanceState.ABSENT
    assert not directory.exists()
    assert (images / "tiny.qcow2").exists()  # the image stays
    print(
        f"create {created_seconds:.1f} s, console marker {boot_seconds:.1f} s, "
        f"reboot (graceful stop, start) {reboot_seconds:.1f} s"
    )


def test_libvirt_refuses_what_qemu_cannot_run_and_the_vm_shows_why(
    daemon: PrivateLibvirtd, images: Path, tmp_path: Path
) -> None:
    from esc.config import LibvirtFlavor

    vim = make_vim(
        daemon,
        images,
        tmp_path / "vim",
        flavors={"huge": LibvirtFlavor(vcpus=288, memory_mib=256)},
    )
    # Refused when defined: no domain and no files are left.
    with pytest.raises(PermanentVimError, match=r"libvirt could not create VM vm-huge: .*CPUs"):
        vim.create_vm(VmSpec("vm-huge", "huge", "tiny", "huge"))
    assert vim.status("vm-huge").state is InstanceState.ABSENT
    assert not vim.files.of("vm-huge").exists()

    # Refused when started: the VM exists, in ERROR, with libvirt's reason.
    vim = make_vim(daemon, images, tmp_path / "vim")
    tagged = VmSpec(
        "vm-vlan", "vlan", "tiny", "tiny", interfaces=(Interface(f"bridge:{BRIDGE}", vlan=70),)
    )
    with pytest.raises(PermanentVimError, match=r"failed to start it: .*vlan") as refused:
        vim.create_vm(tagged)
    status = vim.status("vm-vlan")
    assert status.state is InstanceState.ERROR
    assert "vlan" in status.detail and status.detail in str(refused.value)
    assert vim.list_instances() == ["vm-vlan"]
    vim.delete_vm("vm-vlan")
    assert vim.list_instances() == []


def test_a_libvirtd_restart_is_a_transient_error_and_the_vm_runs_on(
    daemon: PrivateLibvirtd, images: Path, tmp_path: Path
) -> None:
    import libvirt

    vim = make_vim(daemon, images, tmp_path / "vim")
    vim.create_vm(VmSpec("vm-restart", "restart", "tiny", "tiny", DAY0))
    (pid,) = daemon.qemu_pids("esc-vm-restart")
    other = libvirt.open(daemon.uri())
    daemon.stop_libvirtd()
    try:
        with pytest.raises(TransientVimError, match=r"libvirt at .* could not read the status"):
            vim.status("vm-restart")
        # A call on a connection another call already found broken: libvirt's RPC layer
        # says "internal error", which is the connection's, not the VM's.
        for _ in range(2):
            with contextlib.suppress(libvirt.libvirtError):
                other.listAllDomains(0)
        with pytest.raises(libvirt.libvirtError, match="client socket is closed") as closed:
            other.listAllDomains(0)
        assert isinstance(vim._vim_error(closed.value, "list"), TransientVimError)
    finally:
        daemon.start_libvirtd()
    assert vim.status("vm-restart").state is InstanceState.RUNNING  # a new connection
    assert daemon.qemu_pids("esc-vm-restart") == [pid]  # the guest was not restarted
    vim.delete_vm("vm-restart")


def test_a_guest_that_ignores_the_shutdown_request_is_powered_off(
    daemon: PrivateLibvirtd, images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vim = make_vim(daemon, images, tmp_path / "vim", shutdown_timeout=1)
    vim.create_vm(VmSpec("vm-deaf", "deaf", "deaf", "tiny"))
    (pid,) = daemon.qemu_pids("esc-vm-deaf")
    asked = time.monotonic()
    assert vim.stop_vm("vm-deaf").state is InstanceState.STOPPED
    assert 1 <= time.monotonic() - asked < 10
    assert "did not power off within 1 s of the shutdown request: forced off" in caplog.text
    assert not psutil.pid_exists(pid)
    vim.delete_vm("vm-deaf")
