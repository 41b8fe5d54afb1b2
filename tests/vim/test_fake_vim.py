"""What the fake VIM adds to the driver contract (which test_driver_contract runs on it):
one VIM per directory shared by its driver objects, images that behave by the clock,
and the failures a test injects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_an_existing_vm_keeps_the_spec_it_was_created_with(vim: FakeVim, clock: Clock) -> None:
    vim.create_vm(spec(image="slow-boot:5"))
    vim.create_vm(spec(image="healthy"))  # a step run again with a changed descriptor
    assert not vim.is_alive("vm-1")


# images ----------------------------------------------------------------------------------


def test_slow_boot_answers_only_after_each_boot_has_lasted(vim: FakeVim, clock: Clock) -> None:
    vim.create_vm(spec(image="slow-boot:5"))
    assert vim.status("vm-1").state is InstanceState.RUNNING
    assert not vim.is_alive("vm-1")
    clock.now += 5
    assert vim.is_alive("vm-1")
    vim.reboot_vm("vm-1")
    assert not vim.is_alive("vm-1")


def test_unhealthy_after_stays_unhealthy_through_a_reboot(vim: FakeVim, clock: Clock) -> None:
    vim.create_vm(spec(image="unhealthy-after:3"))
    assert vim.is_alive("vm-1")
    clock.now += 3
    assert not vim.is_alive("vm-1")
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING
    assert not vim.is_alive("vm-1")  # its "disk" went bad: only a new instance helps
    vim.delete_vm("vm-1")
    vim.create_vm(spec(image="unhealthy-after:3"))
    assert vim.is_alive("vm-1")


def test_crash_after_is_found_stopped_and_starts_again(vim: FakeVim, clock: Clock) -> None:
    address = vim.create_vm(spec(image="crash-after:2")).address
    clock.now += 1.9
    assert vim.is_alive("vm-1")
    clock.now += 0.1
    assert vim.status("vm-1").state is InstanceState.STOPPED
    assert not vim.is_alive("vm-1")
    assert vim.list_instances() == ["vm-1"]
    assert vim.start_vm("vm-1").address == address
    assert vim.is_alive("vm-1")


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
