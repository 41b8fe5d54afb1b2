"""A VIM that fails as a test asks, at the driver interface, around the local VIM;
and a controller that uses it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from conftest import Node

from esc.engine.controller import Controller
from esc.vim.base import InstanceStatus, VimDriver, VimError, VmSpec


class FaultyVim(VimDriver):
    """The local VIM, with create_vm failing as `fault(call number)` says (None: no fault)."""

    name = "faulty"

    def __init__(self, inner: VimDriver, fault: Callable[[int], VimError | None]) -> None:
        self.inner, self.fault = inner, fault
        self.creates = 0
        self._guard = threading.Lock()

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        with self._guard:
            self.creates += 1
            error = self.fault(self.creates)
        if error is not None:
            raise error
        return self.inner.create_vm(spec)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        return self.inner.start_vm(vm_id)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        return self.inner.stop_vm(vm_id)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        return self.inner.reboot_vm(vm_id)

    def delete_vm(self, vm_id: str) -> None:
        self.inner.delete_vm(vm_id)

    def status(self, vm_id: str) -> InstanceStatus:
        return self.inner.status(vm_id)

    def validate_image(self, image: str) -> None:
        self.inner.validate_image(image)

    def validate_flavor(self, flavor: str) -> None:
        self.inner.validate_flavor(flavor)

    def list_instances(self) -> list[str]:
        return self.inner.list_instances()

    def check(self) -> None:
        self.inner.check()


def faulty_controller(
    node: Node,
    fault: Callable[[int], VimError | None],
    *,
    attempts: int = 3,
    backoff: float = 0.05,
) -> tuple[Controller, FaultyVim]:
    """A started controller whose VIM's create_vm fails as `fault` says; quick retries."""
    settings = node.settings.model_copy(deep=True)
    settings.engine.vim_attempts = attempts
    settings.engine.vim_backoff = backoff
    controller = Controller(node.home, settings)
    vim = FaultyVim(controller.vim, fault)
    controller.vims.default = vim  # the active role, made at start, takes it
    controller.start()
    return controller, vim
