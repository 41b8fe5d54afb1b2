"""What the fake VIM adds to the driver contract (which test_driver_contract runs on it):
one VIM per directory shared by its driver objects, images that behave by the clock as
a VIM shows them, and the failures a test injects."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from esc.monitor.liveness import vm_is_up
from esc.vim.base import (
    InstanceState,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VmSpec,
    load_driver,
)
from esc.vim.fake import FakeVim


class Clock:
    """Time a test moves by hand, so image behaviour is checked without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vim_dir(tmp_path: Path) -> Iterator[Path]:
    # Where load_driver("fake", tmp_path) keeps it: DIR/<driver name>, as for the local VIM.
    yield tmp_path / "fake"
    FakeVim.forget(tmp_path / "fake")


@pytest.fixture
def vim(vim_dir: Path) -> FakeVim:
    return FakeVim(vim_dir)


@pytest.fixture
def clock(vim: FakeVim) -> Clock:
    clock = Clock()
    vim.clock = clock
    return clock


def spec(vm_id: str = "vm-1", image: str = "healthy") -> VmSpec:
    return VmSpec(vm_id, f"name-{vm_id}", image, "m1.tiny")


# one VIM per directory -----------------------------------------------------------------


def test_found_by_name_and_shared_by_every_object_of_its_directory(
    tmp_path: Path, vim_dir: Path
) -> None:
    loaded = load_driver("fake", tmp_path)
    assert isinstance(loaded, FakeVim) and loaded.data_dir == vim_dir
    created = loaded.create_vm(spec())
    again = FakeVim(vim_dir)
    assert again.status("vm-1") == created
    again.faults.transient("status")
    with pytest.raises(TransientVimError):
        loaded.status("vm-1")  # the faults are the VIM's, not one object's
    assert FakeVim(tmp_path / "other").list_instances() == []
    assert not vim_dir.exists()  # nothing on disk: another process sees no VM
    FakeVim.forget(vim_dir)
    assert FakeVim(vim_dir).list_instances() == []


def test_each_vm_has_an_address_of_its_own_for_its_whole_life(vim: FakeVim) -> None:
    first = vim.create_vm(spec("vm-a")).address
    second = vim.create_vm(spec("vm-b")).address
    assert first and second and first != second
    vim.stop_vm("vm-a")
    assert vim.reboot_vm("vm-a").address == first


def test_an_address_is_a_loopback_ip_that_serves_no_health_endpoint(vim: FakeVim) -> None:
    """Nothing sent to it leaves the host, and the liveness check counts the VIM's state
    only: a fake VM fakes no application health."""
    status = vim.create_vm(spec())
    assert status.address is not None
    assert ipaddress.ip_address(status.address) in ipaddress.ip_network("127.77.0.0/16")
    assert vm_is_up(status)
    assert not vm_is_up(vim.stop_vm("vm-1"))


def test_an_existing_vm_keeps_the_spec_it_was_created_with(vim: FakeVim, clock: Clock) -> None:
    vim.create_vm(spec(image="slow-boot:5"))
    again = vim.create_vm(spec(image="healthy"))  # a step run again with a changed descriptor
    assert again.state is InstanceState.BUILDING and "slow-boot:5" in again.detail


# images ----------------------------------------------------------------------------------


def test_slow_boot_is_building_until_each_boot_has_lasted(vim: FakeVim, clock: Clock) -> None:
    booting = vim.create_vm(spec(image="slow-boot:5"))
    assert (booting.state, booting.address) == (InstanceState.BUILDING, None)
    assert not vm_is_up(booting)
    clock.now += 4.9
    assert vim.status("vm-1").state is InstanceState.BUILDING
    clock.now += 0.1
    running = vim.status("vm-1")
    assert running.state is InstanceState.RUNNING and running.address
    assert vm_is_up(running)
    assert vim.reboot_vm("vm-1").state is InstanceState.BUILDING  # each boot is slow
    clock.now += 5
    vim.stop_vm("vm-1")
    assert vim.start_vm("vm-1") == booting
    clock.now += 5
    assert vim.status("vm-1") == running  # the same address after every boot


def test_unhealthy_after_is_not_faked_the_vm_runs_on(vim: FakeVim, clock: Clock) -> None:
    """An application that went bad inside a running VM is not what a VIM shows: the
    local VIM's VMs answer 503 for it, a fake VM runs on."""
    vim.create_vm(spec(image="unhealthy-after:3"))
    clock.now += 3
    status = vim.status("vm-1")
    assert status.state is InstanceState.RUNNING and vm_is_up(status)
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING


def test_crash_after_is_found_stopped_and_starts_again(vim: FakeVim, clock: Clock) -> None:
    address = vim.create_vm(spec(image="crash-after:2")).address
    clock.now += 1.9
    assert vim.status("vm-1").state is InstanceState.RUNNING
    clock.now += 0.1
    crashed = vim.status("vm-1")
    assert (crashed.state, crashed.address) == (InstanceState.STOPPED, None)
    assert not vm_is_up(crashed)
    assert vim.list_instances() == ["vm-1"]
    assert vim.start_vm("vm-1").address == address
    assert vm_is_up(vim.status("vm-1"))
    clock.now += 2
    assert vim.status("vm-1").state is InstanceState.STOPPED  # two seconds after each start


# injected failures -----------------------------------------------------------------------


def test_a_transient_failure_lasts_the_calls_asked_then_the_vim_acts(vim: FakeVim) -> None:
    vim.faults.transient("create_vm", times=2, message="nova: 503 Service Unavailable")
    for _ in range(2):
        with pytest.raises(TransientVimError, match="503"):
            vim.create_vm(spec())
        assert vim.list_instances() == []  # failed before the VIM acted
    assert vim.create_vm(spec()).state is InstanceState.RUNNING
    assert [call for call in vim.calls if call[0] == "create_vm"] == [("create_vm", "vm-1")] * 3
    assert vim.faults.pending() == []


def test_a_permanent_refusal_lasts_until_cleared(vim: FakeVim) -> None:
    vim.faults.permanent("create_vm", message="quota exceeded for instances: 0 of 0 left")
    for _ in range(3):
        with pytest.raises(PermanentVimError, match="quota exceeded"):
            vim.create_vm(spec())
    assert not isinstance(vim.faults.pending()[0].error, TransientVimError)
    vim.faults.clear()
    assert vim.create_vm(spec()).state is InstanceState.RUNNING


def test_a_lost_answer_leaves_the_operation_done(vim: FakeVim) -> None:
    """The VIM acted and its answer timed out: asking again finds the VM, no duplicate."""
    vim.faults.transient("create_vm", after=True)
    with pytest.raises(TransientVimError):
        vim.create_vm(spec())
    assert vim.list_instances() == ["vm-1"]
    assert vim.create_vm(spec()).state is InstanceState.RUNNING
    assert vim.list_instances() == ["vm-1"]


def test_a_fault_may_aim_at_one_vm_and_any_operation(vim: FakeVim) -> None:
    vim.create_vm(spec("vm-a"))
    vim.create_vm(spec("vm-b"))
    vim.faults.permanent("stop_vm", vm_id="vm-b", times=1)
    vim.faults.inject("check", UnknownImage("no image catalogue"), times=1)
    assert vim.stop_vm("vm-a").state is InstanceState.STOPPED
    with pytest.raises(PermanentVimError):
        vim.stop_vm("vm-b")
    assert vim.status("vm-b").state is InstanceState.RUNNING  # refused: left as it was
    assert vim.stop_vm("vm-b").state is InstanceState.STOPPED
    with pytest.raises(UnknownImage):
        vim.check()
    vim.check()


def test_faults_name_a_real_operation_and_a_real_count(vim: FakeVim) -> None:
    with pytest.raises(ValueError, match="no VIM operation 'create'"):
        vim.faults.transient("create")
    with pytest.raises(ValueError, match="at least 1"):
        vim.faults.transient("create_vm", times=0)


def test_refusals_name_the_local_vims_catalogue(vim: FakeVim) -> None:
    with pytest.raises(UnknownImage, match=r"fake VIM's images are healthy, crash-after:N"):
        vim.validate_image("ubuntu")
    with pytest.raises(UnknownFlavor, match=r"fake VIM's flavors are m1\.tiny, m1\.small"):
        vim.create_vm(VmSpec("vm-1", "n", "healthy", "x9.mega"))
