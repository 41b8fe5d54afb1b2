"""The contract every VIM driver keeps, run against each real driver here.

What the engine relies on (esc.vim.base): operations idempotent by VM id, a
refusal raised as a PermanentVimError of the right kind, the VM's address
kept across a stop and start, and VMs that a new driver object (a restarted
controller, the other node) finds as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from vim_host_process import VimHostProcess, wait_until, write_token

from esc.vim.base import (
    InstanceState,
    PermanentVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VmSpec,
)
from esc.vim.fake import FakeVim
from esc.vim.local import LocalVim

DRIVERS = ["local", "vimhost", "fake"]


@pytest.fixture(scope="module")
def shared_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VimHostProcess]:
    """One VIM host for the module: starting one per test would cost more than the tests."""
    root = tmp_path_factory.mktemp("contract-host")
    host = VimHostProcess(root / "vimhost", write_token(root / "token"), root / "vimhost.log")
    host.start()
    try:
        yield host
    finally:
        host.clean_up()


@pytest.fixture(params=DRIVERS)
def make_driver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], VimDriver]]:
    """A factory of driver objects on one VIM: each call is a new controller's driver."""
    if request.param == "fake":

        def make() -> VimDriver:
            return FakeVim(tmp_path / "vim")

        yield make
        # Nothing runs to be killed; what it holds is dropped with its directory.
        FakeVim.forget(tmp_path / "vim")
        return
    if request.param == "local":
        observer = LocalVim(tmp_path / "vim")

        def make() -> VimDriver:
            return LocalVim(tmp_path / "vim")

    else:
        host: VimHostProcess = request.getfixturevalue("shared_host")
        observer = host.vms

        def make() -> VimDriver:
            return host.driver()

    yield make
    # Whatever a test did, its VMs go: the next test starts on an empty VIM.
    cleaner = make()
    for vm_id in cleaner.list_instances():
        cleaner.delete_vm(vm_id)
    for proc in observer.find_vnf_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert wait_until(lambda: not observer.find_vnf_processes(), 5)


def spec(vm_id: str = "vm-1", image: str = "healthy", flavor: str = "m1.tiny") -> VmSpec:
    return VmSpec(vm_id, f"name-{vm_id}", image, flavor, {"app.conf": "x = 1\n"})


def test_create_is_idempotent_and_the_vm_answers(make_driver: Callable[[], VimDriver]) -> None:
    vim = make_driver()
    vim.check()
    created = vim.create_vm(spec())
    assert created.vm_id == "vm-1" and created.state is InstanceState.RUNNING
    assert created.address and created.address.startswith("http://")
    assert vim.create_vm(spec()) == created
    assert vim.status("vm-1") == created
    assert vim.is_alive("vm-1")
    assert vim.list_instances() == ["vm-1"]


def test_stop_start_reboot_keep_the_vm_and_its_address(
    make_driver: Callable[[], VimDriver],
) -> None:
    vim = make_driver()
    address = vim.create_vm(spec()).address
    stopped = vim.stop_vm("vm-1")
    assert (stopped.state, stopped.address) == (InstanceState.STOPPED, None)
    assert vim.stop_vm("vm-1") == stopped
    assert not vim.is_alive("vm-1")
    assert vim.list_instances() == ["vm-1"]  # a stopped VM still exists
    started = vim.start_vm("vm-1")
    assert (started.state, started.address) == (InstanceState.RUNNING, address)
    assert vim.start_vm("vm-1") == started
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING
    assert wait_until(lambda: vim.is_alive("vm-1"), 5)
    vim.stop_vm("vm-1")
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING  # a stopped VM just starts


def test_delete_is_idempotent_and_leaves_nothing(make_driver: Callable[[], VimDriver]) -> None:
    vim = make_driver()
    vim.create_vm(spec())
    vim.delete_vm("vm-1")
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert vim.list_instances() == []
    assert not vim.is_alive("vm-1")
    vim.delete_vm("vm-1")
    vim.delete_vm("never-created")


def test_an_absent_vm_is_reported_or_refused(make_driver: Callable[[], VimDriver]) -> None:
    vim = make_driver()
    assert vim.status("vm-x").state is InstanceState.ABSENT
    assert vim.stop_vm("vm-x").state is InstanceState.ABSENT
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.start_vm("vm-x")
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.reboot_vm("vm-x")
    with pytest.raises(PermanentVimError, match="invalid VM id"):
        vim.status("../x")


def test_unknown_images_and_flavors_are_refused_by_kind(
    make_driver: Callable[[], VimDriver],
) -> None:
    vim = make_driver()
    vim.validate_image("slow-boot:1")
    vim.validate_flavor("m1.small")
    with pytest.raises(UnknownImage, match=r"unknown image 'ubuntu-22\.04'"):
        vim.validate_image("ubuntu-22.04")
    with pytest.raises(UnknownFlavor, match=r"unknown flavor 'x9\.mega'"):
        vim.validate_flavor("x9.mega")
    with pytest.raises(UnknownImage):
        vim.create_vm(spec(image="bogus"))
    with pytest.raises(UnknownFlavor):
        vim.create_vm(spec(flavor="bogus"))
    assert vim.list_instances() == []


def test_a_new_driver_object_finds_the_vms_as_they_were(
    make_driver: Callable[[], VimDriver],
) -> None:
    first = make_driver()
    running = first.create_vm(spec("vm-a"))
    first.create_vm(spec("vm-b"))
    first.stop_vm("vm-b")
    del first  # the controller that made them is gone
    second = make_driver()
    assert second.list_instances() == ["vm-a", "vm-b"]
    assert second.status("vm-a") == running and second.is_alive("vm-a")
    assert second.status("vm-b").state is InstanceState.STOPPED
    assert second.start_vm("vm-b").state is InstanceState.RUNNING
