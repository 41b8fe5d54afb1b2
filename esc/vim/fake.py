"""The fake VIM: VMs kept in memory, for tests that need a VIM but no real VMs.

It keeps the whole driver contract (esc.vim.base) without starting a process:
creation idempotent by VM id, the states after each operation, the local VIM's
images and flavors and its refusals, an address kept for a VM's whole life.
Like every driver it reports VIM state only, and its images behave by the
clock as far as a VIM would show them: a `slow-boot:N` VM is BUILDING for N
seconds after each start (create, start, reboot), then RUNNING; a
`crash-after:N` one is found STOPPED N seconds after each start.

Application health is not faked. Nothing runs in a fake VM to answer ESC's
health endpoint, so its address is a bare loopback IP (127.77.X.Y, never
http://), and for such an address the liveness check (esc.monitor.liveness)
counts the VIM's state only, as for a real VIM's VM. So an `unhealthy-after:N`
VM runs on, as a real VIM shows a VM whose application went bad inside it
(the local VIM's VMs, real processes, answer 503 for it). This host answers a
ping to any loopback address, running VM or not: MONA's ICMPPing of a fake VM
says nothing of it.

A running VM reports its interfaces' fixed and floating IPs as its `ips` (its
`address` stays its own loopback one), and keeps the metadata set_vm_metadata
records, as a real VIM does.

What a VIM holds outlives the controller that asked for it, so the VMs belong
to the data directory, not to a driver object: every FakeVim made for the same
directory in one process sees the same VMs (a controller restarted within a
test finds its VMs again); nothing is written to disk, so another process sees
none of them.

A test makes the VIM fail as a real one does through `faults`: a permanent
refusal or a transient failure of any operation, for a number of calls, for
one VM or all, before the VIM acts or after it (the answer lost). `calls`
records every operation asked, so a test can count the engine's retries.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esc.vim import vnf
from esc.vim.base import (
    InstanceState,
    InstanceStatus,
    PermanentVimError,
    TransientVimError,
    VimDriver,
    VimError,
    VmSpec,
    check_metadata_key,
    check_vm_id,
)
from esc.vim.local import validate_flavor, validate_image

# The operations of the driver interface a fault may be injected into.
OPERATIONS = (
    "validate_image",
    "validate_flavor",
    "create_vm",
    "start_vm",
    "stop_vm",
    "power_off",
    "reboot_vm",
    "delete_vm",
    "status",
    "list_instances",
    "vm_metadata",
    "set_vm_metadata",
    "check",
)

# Loopback addresses: whatever is sent to one never leaves the host, and each VM still has
# an address of its own. Bare IPs, not http:// ones: a fake VM serves no health endpoint.
ADDRESS_NET = "127.77"
_addresses = itertools.count(1)


def _next_address() -> str:
    n = next(_addresses) % (256 * 256 - 2) + 1  # never .0.0 (a network address)
    return f"{ADDRESS_NET}.{n // 256}.{n % 256}"


@dataclass
class Fault:
    """One injected failure: `error` raised by `operation` for `times` calls (None: until
    cleared), for one VM or any (vm_id None); `after`: once the VIM has acted."""

    operation: str
    error: VimError
    times: int | None = 1
    vm_id: str | None = None
    after: bool = False

    def matches(self, operation: str, vm_id: str | None, after: bool) -> bool:
        return (
            self.operation == operation
            and self.after == after
            and (self.vm_id is None or self.vm_id == vm_id)
            and (self.times is None or self.times > 0)
        )


class Faults:
    """The failures a test asks the VIM for, shared by every driver object of that VIM."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: list[Fault] = []

    def inject(
        self,
        operation: str,
        error: VimError,
        *,
        times: int | None = 1,
        vm_id: str | None = None,
        after: bool = False,
    ) -> Fault:
        """`operation` raises `error` for its next `times` calls (None: every call until
        cleared), only for `vm_id` when given. `after`: the VIM does the operation and then
        the error is raised, as when its answer is lost (a timeout after the VIM acted)."""
        if operation not in OPERATIONS:
            raise ValueError(f"no VIM operation {operation!r}; use one of {', '.join(OPERATIONS)}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (None: until cleared), not {times}")
        fault = Fault(operation, error, times, vm_id, after)
        with self._lock:
            self._faults.append(fault)
        return fault

    def transient(
        self,
        operation: str,
        *,
        times: int | None = 1,
        vm_id: str | None = None,
        after: bool = False,
        message: str = "",
    ) -> Fault:
        """A failure that passes (a timeout, a busy VIM): the engine asks again."""
        error = TransientVimError(message or f"fake VIM: {operation} timed out")
        return self.inject(operation, error, times=times, vm_id=vm_id, after=after)

    def permanent(
        self,
        operation: str,
        *,
        times: int | None = None,
        vm_id: str | None = None,
        message: str = "",
    ) -> Fault:
        """A refusal (quota exceeded, bad request): asking again gets the same answer, so by
        default it lasts until cleared."""
        error = PermanentVimError(message or f"fake VIM: {operation} refused: quota exceeded")
        return self.inject(operation, error, times=times, vm_id=vm_id)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if f.times is None or f.times > 0]

    def raise_if_due(self, operation: str, vm_id: str | None, after: bool) -> None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(operation, vm_id, after):
                    if fault.times is not None:
                        fault.times -= 1
                    raise fault.error


@dataclass
class _Instance:
    spec: VmSpec
    address: str
    running: bool = False
    booted_at: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)


def _ips(instance: _Instance) -> tuple[str, ...]:
    """The fixed and floating addresses its interfaces asked for, as a VIM that has both
    reports them (the fake has no network to assign any other)."""
    ips = []
    for interface in instance.spec.interfaces:
        ips += [ip.split("/")[0] for ip in (interface.ip, interface.floating_ip) if ip]
    return tuple(ips)


@dataclass
class _Vim:
    """What one fake VIM holds: the state every driver object of its directory shares."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    # The VIM's, not a driver object's: a test that moves time moves it for every object.
    clock: Callable[[], float] = time.monotonic
    # By (the controller its tags name, VM id); None: an untagged instance.
    instances: dict[tuple[str | None, str], _Instance] = field(default_factory=dict)
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    faults: Faults = field(init=False)

    def __post_init__(self) -> None:
        self.faults = Faults(self.lock)


_vims: dict[Path, _Vim] = {}
_vims_guard = threading.Lock()


def _vim_of(data_dir: Path) -> _Vim:
    key = Path(data_dir).absolute()
    with _vims_guard:
        return _vims.setdefault(key, _Vim())


class FakeVim(VimDriver):
    name = "fake"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._vim = _vim_of(self.data_dir)

    @classmethod
    def forget(cls, data_dir: Path) -> None:
        """Drop the VIM of `data_dir` and all it holds (a test's clean-up)."""
        with _vims_guard:
            _vims.pop(Path(data_dir).absolute(), None)

    @property
    def clock(self) -> Callable[[], float]:
        """The time the images' behaviour is measured by (time.monotonic); a test may set
        its own, for every driver object of this VIM."""
        return self._vim.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._vim.clock = clock

    @property
    def faults(self) -> Faults:
        return self._vim.faults

    @property
    def calls(self) -> list[tuple[str, str | None]]:
        """(operation, VM id or None) of every call made to this VIM, oldest first."""
        with self._vim.lock:
            return list(self._vim.calls)

    def _call(self, operation: str, vm_id: str | None, act: Callable[[], Any]) -> Any:
        """Record the call, raise what a test injected, and act, all under the VIM's lock:
        each operation is atomic, as the local VIM makes it with its per-VM locks."""
        with self._vim.lock:
            self._vim.calls.append((operation, vm_id))
            self.faults.raise_if_due(operation, vm_id, after=False)
            result = act()
            self.faults.raise_if_due(operation, vm_id, after=True)
            return result

    # images and flavors -----------------------------------------------------------------

    def validate_image(self, image: str) -> None:
        self._call("validate_image", None, lambda: validate_image(image, "fake VIM"))

    def validate_flavor(self, flavor: str) -> None:
        self._call("validate_flavor", None, lambda: validate_flavor(flavor, "fake VIM"))

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        def create() -> InstanceStatus:
            check_vm_id(spec.vm_id)
            validate_image(spec.image, "fake VIM")
            validate_flavor(spec.flavor, "fake VIM")
            instance = self._vim.instances.get(self._key(spec.vm_id))
            if instance is None:
                instance = _Instance(spec, _next_address())
                self._vim.instances[self._key(spec.vm_id)] = instance
            # An existing VM keeps its first spec, as the local VIM keeps its spec.json.
            if not self._running(instance):
                self._boot(instance)
            return self._status(spec.vm_id)

        return self._call("create_vm", spec.vm_id, create)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        def start() -> InstanceStatus:
            instance = self._require_defined(vm_id)
            if not self._running(instance):
                self._boot(instance)
            return self._status(vm_id)

        return self._call("start_vm", vm_id, start)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        def stop() -> InstanceStatus:
            check_vm_id(vm_id)
            instance = self._vim.instances.get(self._key(vm_id))
            if instance is not None:
                instance.running = False
            return self._status(vm_id)

        return self._call("stop_vm", vm_id, stop)

    def power_off(self, vm_id: str) -> InstanceStatus:
        # As stop_vm (a fake VM has no guest to ask), but its own operation in `calls`, so
        # that a test tells a hard power-off from a stop.
        def power_off() -> InstanceStatus:
            check_vm_id(vm_id)
            instance = self._vim.instances.get(self._key(vm_id))
            if instance is not None:
                instance.running = False
            return self._status(vm_id)

        return self._call("power_off", vm_id, power_off)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        def reboot() -> InstanceStatus:
            self._boot(self._require_defined(vm_id))
            return self._status(vm_id)

        return self._call("reboot_vm", vm_id, reboot)

    def delete_vm(self, vm_id: str) -> None:
        def delete() -> None:
            check_vm_id(vm_id)
            self._vim.instances.pop(self._key(vm_id), None)

        self._call("delete_vm", vm_id, delete)

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        def status() -> InstanceStatus:
            check_vm_id(vm_id)
            return self._status(vm_id)

        return self._call("status", vm_id, status)

    def list_instances(self) -> list[str]:
        def own() -> list[str]:
            return sorted(v for c, v in self._vim.instances if c == self.controller_id)

        return self._call("list_instances", None, own)

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        return self._call("vm_metadata", vm_id, lambda: dict(self._require_defined(vm_id).metadata))

    def set_vm_metadata(self, vm_id: str, changes: Mapping[str, str | None]) -> None:
        def update() -> None:
            for key in changes:
                check_metadata_key(key)
            metadata = self._require_defined(vm_id).metadata
            for key, value in changes.items():
                if value is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = str(value)

        self._call("set_vm_metadata", vm_id, update)

    def check(self) -> None:
        # Always usable unless a test injects a fault: there is nothing to reach.
        self._call("check", None, lambda: None)

    # instances --------------------------------------------------------------------------

    def _key(self, vm_id: str) -> tuple[str | None, str]:
        # Instances are found by their tags, as on a real VIM: another controller's
        # instance of the same name is another instance, and this driver never sees it.
        return (self.controller_id, vm_id)

    def put_foreign(self, name: str, controller: str | None = None) -> None:
        """Make an instance that is not this controller's, as another tool or another
        controller would (untagged when `controller` is None), running."""
        with self._vim.lock:
            spec = VmSpec(name, name, "healthy", "m1.tiny")
            instance = _Instance(spec, _next_address(), running=True, booted_at=self._vim.clock())
            self._vim.instances[(controller, name)] = instance

    def foreign_running(self, name: str, controller: str | None = None) -> bool:
        """The instance `put_foreign` made is still there and running, as it was made."""
        with self._vim.lock:
            instance = self._vim.instances.get((controller, name))
            return instance is not None and instance.running

    def tags_of(self, vm_id: str) -> dict[str, str]:
        """The tags the VIM holds for this controller's instance `vm_id` ({} if none)."""
        with self._vim.lock:
            return self.tags(vm_id) if self._key(vm_id) in self._vim.instances else {}

    def spec_of(self, vm_id: str) -> VmSpec | None:
        """What this controller's instance `vm_id` was created with (None if none), as a
        test reads what a real VIM holds (its day-0, its NICs)."""
        with self._vim.lock:
            instance = self._vim.instances.get(self._key(vm_id))
            return instance.spec if instance else None

    def _require_defined(self, vm_id: str) -> _Instance:
        check_vm_id(vm_id)
        instance = self._vim.instances.get(self._key(vm_id))
        if instance is None:
            raise PermanentVimError(f"VM {vm_id} does not exist on the fake VIM; create it again")
        return instance

    def _boot(self, instance: _Instance) -> None:
        instance.running = True
        instance.booted_at = self._vim.clock()

    def _running(self, instance: _Instance) -> bool:
        """Running, unless its image crashed it since its last boot (it then stays stopped,
        as a crashed VNF process does)."""
        if instance.running:
            kind, seconds = vnf.parse_image(instance.spec.image)
            if kind == "crash-after" and self._vim.clock() - instance.booted_at >= seconds:
                instance.running = False
        return instance.running

    def _booting(self, instance: _Instance) -> bool:
        """Within the first N seconds of a boot of a `slow-boot:N` image: still starting, as
        a VIM shows a VM whose guest has not come up yet."""
        kind, seconds = vnf.parse_image(instance.spec.image)
        return kind == "slow-boot" and self._vim.clock() - instance.booted_at < seconds

    def _status(self, vm_id: str) -> InstanceStatus:
        instance = self._vim.instances.get(self._key(vm_id))
        if instance is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        if not self._running(instance):
            return InstanceStatus(vm_id, InstanceState.STOPPED)
        if self._booting(instance):
            detail = f"booting ({instance.spec.image})"
            return InstanceStatus(vm_id, InstanceState.BUILDING, None, detail, _ips(instance))
        return InstanceStatus(vm_id, InstanceState.RUNNING, instance.address, "", _ips(instance))
