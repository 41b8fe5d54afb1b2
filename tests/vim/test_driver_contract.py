"""The contract every VIM driver keeps, run against every target (vim_target.TARGETS).

What the engine relies on (esc.vim.base): operations idempotent by VM id, the state
after each, a refusal raised as a PermanentVimError of the right kind, the VM's
address kept across a stop and start, VMs that a new driver object (a restarted
controller, the other node) finds as they were, every instance tagged as this
controller's, and an instance that is not this controller's never listed or touched;
a power-off (a fence) that leaves the VM as a stop does, and VM metadata kept on the
VIM by the drivers that keep it. A driver reports VIM state only: where the suite asks
whether a VM is up, it asks as a deploy does, with the liveness check of its address
(esc.monitor.liveness: the health endpoint of an http:// one, the VIM's RUNNING else).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vim_host_process import VimHostProcess, wait_until, write_token
from vim_target import TARGETS, Target, target

from esc.monitor.liveness import vm_is_up
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    MetadataUnsupported,
    PermanentVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VmSpec,
)


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


@pytest.fixture(params=TARGETS)
def vim_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from target(request.param, request, tmp_path)


def spec(t: Target, vm_id: str = "vm-1", image: str = "", flavor: str = "") -> VmSpec:
    return VmSpec(
        vm_id, f"name-{vm_id}", image or t.image, flavor or t.flavor, {"app.conf": "x = 1\n"}
    )


def test_create_is_idempotent_and_the_vm_runs(vim_target: Target) -> None:
    vim = vim_target.make()
    vim.check()
    created = vim.create_vm(spec(vim_target))
    assert created.vm_id == "vm-1" and created.state is InstanceState.RUNNING
    if vim_target.http_address:
        assert created.address and created.address.startswith("http://")
    assert vim.create_vm(spec(vim_target)) == created
    assert vim.status("vm-1") == created
    assert vm_is_up(vim.status("vm-1"))
    assert vim.list_instances() == ["vm-1"]


def test_stop_start_reboot_keep_the_vm_and_its_address(vim_target: Target) -> None:
    vim = vim_target.make()
    address = vim.create_vm(spec(vim_target)).address
    stopped = vim.stop_vm("vm-1")
    assert (stopped.state, stopped.address) == (InstanceState.STOPPED, None)
    assert vim.stop_vm("vm-1") == stopped
    assert not vm_is_up(vim.status("vm-1"))
    assert vim.list_instances() == ["vm-1"]  # a stopped VM still exists
    started = vim.start_vm("vm-1")
    assert (started.state, started.address) == (InstanceState.RUNNING, address)
    assert vim.start_vm("vm-1") == started
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING
    assert wait_until(lambda: vm_is_up(vim.status("vm-1")), 5)
    vim.stop_vm("vm-1")
    assert vim.reboot_vm("vm-1").state is InstanceState.RUNNING  # a stopped VM just starts


def test_delete_is_idempotent_and_leaves_nothing(vim_target: Target) -> None:
    vim = vim_target.make()
    vim.create_vm(spec(vim_target))
    vim.delete_vm("vm-1")
    assert vim.status("vm-1").state is InstanceState.ABSENT
    assert vim.list_instances() == []
    assert not vm_is_up(vim.status("vm-1"))
    vim.delete_vm("vm-1")
    vim.delete_vm("never-created")


def test_an_absent_vm_is_reported_or_refused(vim_target: Target) -> None:
    vim = vim_target.make()
    assert vim.status("vm-x").state is InstanceState.ABSENT
    assert vim.stop_vm("vm-x").state is InstanceState.ABSENT
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.start_vm("vm-x")
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.reboot_vm("vm-x")
    with pytest.raises(PermanentVimError, match="invalid VM id"):
        vim.status("../x")


def test_unknown_images_and_flavors_are_refused_by_kind(vim_target: Target) -> None:
    vim = vim_target.make()
    vim.validate_image(vim_target.image)
    vim.validate_flavor(vim_target.flavor)
    with pytest.raises(UnknownImage, match=r"unknown image 'ubuntu-99\.04'"):
        vim.validate_image("ubuntu-99.04")
    with pytest.raises(UnknownFlavor, match=r"unknown flavor 'x9\.mega'"):
        vim.validate_flavor("x9.mega")
    with pytest.raises(UnknownImage):
        vim.create_vm(spec(vim_target, image="bogus"))
    with pytest.raises(UnknownFlavor):
        vim.create_vm(spec(vim_target, flavor="bogus"))
    assert vim.list_instances() == []


def test_a_new_driver_object_finds_the_vms_as_they_were(vim_target: Target) -> None:
    first = vim_target.make()
    running = first.create_vm(spec(vim_target, "vm-a"))
    first.create_vm(spec(vim_target, "vm-b"))
    first.stop_vm("vm-b")
    del first  # the controller that made them is gone
    second = vim_target.make()
    assert second.list_instances() == ["vm-a", "vm-b"]
    assert second.status("vm-a") == running and vm_is_up(second.status("vm-a"))
    assert second.status("vm-b").state is InstanceState.STOPPED
    assert second.start_vm("vm-b").state is InstanceState.RUNNING


def test_every_instance_carries_this_controllers_tags(vim_target: Target) -> None:
    if vim_target.tags_of is None:
        pytest.skip("this target cannot read an instance's tags bypassing the driver")
    vim = vim_target.make()
    vim.create_vm(spec(vim_target, "vm-t"))
    assert vim_target.tags_of("vm-t") == {TAG_CONTROLLER: vim.controller_id, TAG_VM: "vm-t"}


def test_an_instance_that_is_not_this_controllers_is_never_touched(vim_target: Target) -> None:
    if vim_target.put_foreign is None or vim_target.foreign_running is None:
        pytest.skip("the local VIM's instance directory belongs to one controller")
    vim = vim_target.make()
    vim_target.put_foreign("other-vm")
    vim.create_vm(spec(vim_target, "vm-own"))
    assert vim.list_instances() == ["vm-own"]
    assert vim.status("other-vm").state is InstanceState.ABSENT
    assert vim.stop_vm("other-vm").state is InstanceState.ABSENT
    vim.delete_vm("other-vm")
    assert vim_target.foreign_running("other-vm")


def test_quarantine_stops_an_instance_and_keeps_it(vim_target: Target) -> None:
    vim = vim_target.make()
    vim.create_vm(spec(vim_target, "vm-q"))
    assert vim.quarantine("vm-q").state is InstanceState.STOPPED
    assert vim.list_instances() == ["vm-q"]
    assert vim.start_vm("vm-q").state is InstanceState.RUNNING


def test_power_off_leaves_the_vm_as_a_stop_does(vim_target: Target) -> None:
    vim = vim_target.make()
    address = vim.create_vm(spec(vim_target, "vm-p")).address
    off = vim.power_off("vm-p")
    assert (off.state, off.address) == (InstanceState.STOPPED, None)
    assert vim.power_off("vm-p") == off  # a powered-off VM: no error
    assert not vm_is_up(vim.status("vm-p"))
    assert vim.list_instances() == ["vm-p"]
    started = vim.start_vm("vm-p")
    assert (started.state, started.address) == (InstanceState.RUNNING, address)
    assert vim.power_off("vm-x").state is InstanceState.ABSENT
    if vim_target.put_foreign is not None and vim_target.foreign_running is not None:
        vim_target.put_foreign("other-vm")
        assert vim.power_off("other-vm").state is InstanceState.ABSENT
        assert vim_target.foreign_running("other-vm")


def test_vm_metadata_is_kept_on_the_vim_or_refused_as_unsupported(vim_target: Target) -> None:
    vim = vim_target.make()
    vim.create_vm(spec(vim_target, "vm-m"))
    if type(vim).vm_metadata is VimDriver.vm_metadata:
        with pytest.raises(MetadataUnsupported, match="keeps no metadata on its VMs"):
            vim.set_vm_metadata("vm-m", {"node": "x"})
        with pytest.raises(MetadataUnsupported):
            vim.vm_metadata("vm-m")
        return
    assert vim.vm_metadata("vm-m") == {}
    record = {"node": '{"ip": "198.18.0.12/24", "image": "esc-1.2.0.1"}', "outdated": "a reason"}
    vim.set_vm_metadata("vm-m", record)
    vim.power_off("vm-m")  # kept while it is off, and by any driver object
    other = vim_target.make()
    assert other.vm_metadata("vm-m") == record
    other.set_vm_metadata("vm-m", {"outdated": None})
    other.set_vm_metadata("vm-m", {"outdated": None})  # removing an absent key: no error
    assert vim.vm_metadata("vm-m") == {"node": record["node"]}
    assert vim.start_vm("vm-m").state is InstanceState.RUNNING
    assert vim.vm_metadata("vm-m") == {"node": record["node"]}
    with pytest.raises(PermanentVimError, match="invalid metadata key"):
        vim.set_vm_metadata("vm-m", {"Esc.Node": "x"})
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.vm_metadata("vm-x")
    with pytest.raises(PermanentVimError, match="does not exist"):
        vim.set_vm_metadata("vm-x", {"node": "x"})
