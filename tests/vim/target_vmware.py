"""govmomi's vCenter simulator as a contract target: the vmware driver on a real
implementation of vCenter's API, VMs cloned from a template."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from vcsim_process import IMAGE, shared
from vim_target import Target

from esc.vim.base import TAG_CONTROLLER, TAG_VM
from esc.vim.vmware import VmwareVim


def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    simulator = shared(request)  # one per test module: the tests share it
    controller = f"contract-{uuid.uuid4().hex[:8]}"  # ... and never see each other's VMs
    made: list[VmwareVim] = []
    foreign: list[str] = []

    def make() -> VmwareVim:
        made.append(simulator.driver(controller))
        return made[-1]

    def put_foreign(name: str) -> None:
        simulator.put_vm(name)
        foreign.append(name)

    def foreign_running(name: str) -> bool:
        vm = simulator.vm_named(name)
        return vm is not None and vm.runtime.powerState == "poweredOn"

    def tags_of(vm_id: str) -> dict[str, str]:
        vm = simulator.vms_of(controller).get(vm_id)
        if vm is None:
            return {}
        options = simulator.options(vm)
        return {TAG_CONTROLLER: options["esc.controller"], TAG_VM: options["esc.vm_id"]}

    yield Target(
        make=make,
        image=IMAGE,
        flavor="m1.tiny",
        put_foreign=put_foreign,
        foreign_running=foreign_running,
        tags_of=tags_of,
    )
    for vm in simulator.vms_of(controller).values():
        simulator.destroy(vm)
    for name in foreign:
        if (vm := simulator.vm_named(name)) is not None:
            simulator.destroy(vm)
    for driver in made:
        driver.close()
