"""The interface every VIM driver implements, and how a driver is found by name.

As in Patroni's DCS backends: one abstract class, one module per backend
(`esc.vim.<name>`), the concrete class found by the name in esc.toml.
Every operation is idempotent and keyed by the controller's VM id, so a
transaction step can be run again after a crash, or a call retried after a
transient error, without creating a duplicate or failing on what is already
done.
"""

from __future__ import annotations

import abc
import enum
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from esc.config import NodeHome, Settings, VimSettings

# The drivers [vim] driver may name, for the error that lists them.
DRIVERS = ("local", "vimhost", "fake")


class VimError(Exception):
    """A VIM refused or failed an operation; the message says what to do.

    Drivers raise one of its two kinds, so the engine knows whether asking
    again can help; a driver maps its SDK's errors onto them (OpenStack:
    HTTP 4xx such as quota exceeded, image or flavor not found, bad request
    → permanent; 5xx, timeouts, connection refused or reset → transient;
    libvirt, VMware and CSP drivers alike). A plain VimError counts as
    permanent: an error not known to pass is not retried.
    """


class PermanentVimError(VimError):
    """The VIM refused: asking again the same thing gets the same answer (quota, unknown
    image or flavor, bad request). The transaction ends FAILED with this message."""


class TransientVimError(VimError):
    """The VIM could not answer now (timeout, 5xx, connection refused, busy): the engine
    asks again with backoff ([engine] vim_attempts, vim_backoff), then gives up."""


class UnknownImage(PermanentVimError):
    pass


class UnknownFlavor(PermanentVimError):
    pass


class InstanceState(enum.StrEnum):
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"  # exists on the VIM, not running
    ABSENT = "ABSENT"  # the VIM has no such instance


@dataclass(frozen=True)
class VmSpec:
    """What the controller asks a VIM to create."""

    vm_id: str
    name: str
    image: str
    flavor: str
    day0_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceStatus:
    vm_id: str
    state: InstanceState
    # Where the VM answers (local VIM: http://127.0.0.1:PORT), None unless running.
    address: str | None = None
    detail: str = ""


class VimDriver(abc.ABC):
    """One virtual infrastructure manager."""

    name: ClassVar[str]

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> Self:
        """The driver as [vim] configures it (relative paths are in the node home `home`);
        a driver with nothing to configure keeps its state under `data_dir`."""
        return cls(data_dir)  # type: ignore[call-arg]

    @abc.abstractmethod
    def validate_image(self, image: str) -> None:
        """Raise UnknownImage naming the known images when `image` cannot be used."""

    @abc.abstractmethod
    def validate_flavor(self, flavor: str) -> None:
        """Raise UnknownFlavor naming the known flavors when `flavor` cannot be used."""

    @abc.abstractmethod
    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        """Create and start the VM. If it already exists, return it as it is (no duplicate)."""

    @abc.abstractmethod
    def start_vm(self, vm_id: str) -> InstanceStatus:
        """Start a stopped VM; a running one is left alone."""

    @abc.abstractmethod
    def stop_vm(self, vm_id: str) -> InstanceStatus:
        """Stop the VM, keeping its definition; a stopped one is left alone."""

    @abc.abstractmethod
    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        """Stop then start the VM (a stopped VM is just started)."""

    @abc.abstractmethod
    def delete_vm(self, vm_id: str) -> None:
        """Stop and remove the VM; an absent VM is not an error."""

    @abc.abstractmethod
    def status(self, vm_id: str) -> InstanceStatus:
        """What the VIM knows of the VM now."""

    @abc.abstractmethod
    def is_alive(self, vm_id: str) -> bool:
        """The VM answers its aliveness check (local VIM: its health endpoint)."""

    @abc.abstractmethod
    def list_instances(self) -> list[str]:
        """The VM ids this VIM holds for this controller (to find orphans)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise VimError when the VIM cannot be reached or used."""

    def recover(self) -> None:  # noqa: B027 - most drivers have nothing to finish
        """Finish what a crash interrupted. The controller calls it once, at start;
        nothing else does, so constructing a driver and check() have no effects."""


def driver_for(home: NodeHome, settings: Settings) -> VimDriver:
    """The VIM driver of a node, as its esc.toml [vim] section says."""
    return load_driver(settings.vim.driver, home.vim_location(settings), settings.vim, home.root)


def load_driver(
    name: str,
    data_dir: Path,
    settings: VimSettings | None = None,
    home: Path | None = None,
) -> VimDriver:
    """The driver named `name`, keeping its state under `data_dir`, configured by
    `settings` (the [vim] defaults when None) with relative paths in `home`."""
    if not name.isidentifier():
        raise VimError(f"VIM driver name {name!r} is not valid; use e.g. 'local'")
    try:
        module = importlib.import_module(f"esc.vim.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"esc.vim.{name}":
            raise  # the driver exists but lacks a dependency: say that, not "unknown driver"
        raise VimError(
            f"unknown VIM driver {name!r}: set [vim] driver in esc.toml to one of: "
            f"{', '.join(DRIVERS)}"
        ) from exc
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, VimDriver)
            and value is not VimDriver
            and getattr(value, "name", None) == name
        ):
            if settings is None:
                from esc.config import VimSettings

                settings = VimSettings()
            return value.from_settings(data_dir / name, settings, home or data_dir)
    raise VimError(f"module esc.vim.{name} defines no VimDriver named {name!r}")
