"""The interface every VIM driver implements, and how a driver is found by name.

As in Patroni's DCS backends: one abstract class, one module per backend
(`esc.vim.<name>`), the concrete class found by the name in esc.toml, through
the `esc.vim` entry points, so that each VIM's SDK can be an optional extra.
Every operation is idempotent and keyed by the controller's VM id, so a
transaction step can be run again after a crash, or a call retried after a
transient error, without creating a duplicate or failing on what is already
done.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from esc.config import NodeHome, Settings, VimSettings

# The entry-point group a driver is installed under (name = its `name`): a driver is
# found by name, and one whose SDK is missing is told apart from an unknown one.
ENTRY_POINT_GROUP = "esc.vim"


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


class MetadataUnsupported(PermanentVimError):
    """The driver keeps no metadata of its own on a VM (see VimDriver.vm_metadata)."""


class InstanceState(enum.StrEnum):
    BUILDING = "BUILDING"  # the VIM is still creating or starting it
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"  # exists on the VIM, not running
    ERROR = "ERROR"  # the VIM failed it; InstanceStatus.detail holds the VIM's reason
    ABSENT = "ABSENT"  # the VIM has no such instance


# The metadata every instance a driver creates carries, so that it is known as this
# controller's (and which VM it is) by any driver object, after any restart: a VIM
# instance without both is someone else's and is never touched.
TAG_CONTROLLER = "esc-controller"
TAG_VM = "esc-vm-id"
VM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# The keys of VimDriver.set_vm_metadata: plain names that fit every VIM's metadata.
METADATA_KEY = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")


def check_vm_id(vm_id: str) -> None:
    """Refuse an id that is no plain name (a path, a hidden name): drivers use it in
    file names, instance names and URLs."""
    if not isinstance(vm_id, str) or not VM_ID.match(vm_id):
        raise PermanentVimError(
            f"invalid VM id {vm_id!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )


def check_metadata_key(key: str) -> None:
    if not isinstance(key, str) or not METADATA_KEY.match(key):
        raise PermanentVimError(
            f"invalid metadata key {key!r}: use lowercase letters, digits, '_' and '-' "
            "(at most 64, starting with a letter)"
        )


@dataclass(frozen=True)
class Interface:
    """One NIC of a VM, on a network the VIM already has (a driver creates none)."""

    network: str  # the VIM's name for it: a neutron network, libvirt network, port group
    ip: str | None = None  # a fixed address on that network; None: the VIM assigns one
    floating_ip: str | None = None  # an existing floating IP to associate (OpenStack)
    model: str = "virtio"  # the NIC's device model where the VIM asks (libvirt, CSP)
    vlan: int | None = None  # an access VLAN where the VIM asks (CSP)


@dataclass(frozen=True)
class Volume:
    """A data disk created with the VM and deleted with it."""

    name: str
    size_gb: int


@dataclass(frozen=True)
class Placement:
    """Where the VIM should put the VM; empty fields are the VIM's choice."""

    zone: str = ""  # OpenStack availability zone
    host: str = ""  # compute host, ESXi host or CSP host
    datastore: str = ""  # VMware datastore
    cluster: str = ""  # VMware cluster
    # VMs naming the same group are placed by group_policy among themselves: "affinity"
    # (one host) or "anti-affinity" (each on another host; the default for a group), as
    # OpenStack's server groups place them.
    group: str = ""
    group_policy: str = ""


@dataclass(frozen=True)
class VmSpec:
    """What the controller asks a VIM to create.

    `day0_config` maps file names to their text; each driver delivers it the VIM's way
    (the local VIM's instance directory, a cloud-init config drive on OpenStack and
    libvirt, guestinfo properties on VMware, a day0 file on CSP).
    """

    vm_id: str
    name: str
    image: str
    flavor: str
    day0_config: dict[str, Any] = field(default_factory=dict)
    interfaces: tuple[Interface, ...] = ()
    volumes: tuple[Volume, ...] = ()
    placement: Placement = field(default_factory=Placement)


@dataclass(frozen=True)
class InstanceStatus:
    vm_id: str
    state: InstanceState
    # Where the VM answers, which says how esc.monitor.liveness asks it (the local VIM:
    # http://127.0.0.1:PORT, its health endpoint's; a real VIM: its first interface's IP
    # address; the fake VIM: a loopback IP of its own), None unless running.
    address: str | None = None
    detail: str = ""  # the VIM's own words on the state (an ERROR's reason)
    ips: tuple[str, ...] = ()  # every address the VIM gave it, floating ones included


class VimDriver(abc.ABC):
    """One virtual infrastructure manager, as its VIM reports it: the state of each
    instance, never the health of the application in it (the liveness check of
    esc.monitor.liveness asks the VM itself, at its address)."""

    name: ClassVar[str]
    # How day0_config reaches the guest. False: the driver puts each file where the guest
    # reads its day-0 (cloud-init's write_files under its day0_dir, an instance
    # directory). True: the files go as they are onto a CD labelled `cidata` (CSP's day0
    # file), so a cloud-init guest reads them only as its NoCloud seed (user-data,
    # meta-data, network-config), which whoever wants the files elsewhere writes.
    day0_on_cd: ClassVar[bool] = False
    # Set by load_driver from the controller's id (kept in its database, so both nodes of
    # a pair and a restored node have the same): the value of every instance's TAG_CONTROLLER.
    controller_id: str = "esc"

    def tags(self, vm_id: str) -> dict[str, str]:
        """The metadata that marks the instance of `vm_id` as this controller's."""
        return {TAG_CONTROLLER: self.controller_id, TAG_VM: vm_id}

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

    def power_off(self, vm_id: str) -> InstanceStatus:
        """Power the VM off at once, as pulling its plug: the guest is neither asked nor
        waited for. Fencing needs this: a fenced node must stop acting now, and a guest
        that hangs or ignores a shutdown request must not delay it. A stopped VM is left
        alone; an absent one is reported ABSENT.

        The default is stop_vm, for a driver that has no hard power-off of its own yet:
        every driver's stop ends in a forced power-off once its bounded wait for the
        guest has passed (libvirt's, vCenter's and nova's stop all do), so the VM is still
        powered off, only up to that bound later. A driver overrides it where its VIM can
        cut the power at once."""
        return self.stop_vm(vm_id)

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
    def list_instances(self) -> list[str]:
        """The VM ids of the instances tagged as this controller's, sorted (to find
        orphans). An instance without this controller's tags is never listed."""

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        """What set_vm_metadata recorded on this controller's VM `vm_id` ({} if nothing).

        It is kept by the VIM itself, in the VM's own metadata, so it is durable and the
        same for every driver object on any host with the VIM's credentials (the witness
        record of a pair of node VMs lives there), never where the guest could write it.
        Raises PermanentVimError for a VM that does not exist, MetadataUnsupported when
        the driver keeps none (the default)."""
        raise MetadataUnsupported(
            f"the {self.name} VIM driver keeps no metadata on its VMs (vm_metadata is not "
            "implemented for it)"
        )

    def set_vm_metadata(self, vm_id: str, changes: Mapping[str, str | None]) -> None:
        """Set each key of `changes` on this controller's VM `vm_id` (None: remove it),
        keys as check_metadata_key allows; the other keys are kept. Durable on the VIM
        when it returns."""
        raise MetadataUnsupported(
            f"the {self.name} VIM driver keeps no metadata on its VMs (set_vm_metadata is "
            "not implemented for it)"
        )

    def quarantine(self, vm_id: str) -> InstanceStatus:
        """Put an orphan (tagged as this controller's, but with no VM record) out of
        harm's way without losing it: stopped, never deleted."""
        return self.stop_vm(vm_id)

    @abc.abstractmethod
    def check(self) -> None:
        """Raise VimError when the VIM cannot be reached or used."""

    def recover(self) -> None:  # noqa: B027 - most drivers have nothing to finish
        """Finish what a crash interrupted. The controller calls it once, at start;
        nothing else does, so constructing a driver and check() have no effects."""


def driver_for(home: NodeHome, settings: Settings, controller_id: str = "esc") -> VimDriver:
    """The VIM driver of a node, as its esc.toml [vim] section says."""
    return load_driver(
        settings.vim.driver,
        home.vim_location(settings),
        settings.vim,
        home.root,
        controller_id,
    )


def installed_drivers() -> dict[str, EntryPoint]:
    """The drivers installed, by name: the `esc.vim` entry points of every installed
    distribution (this one's and any plug-in's)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_driver(
    name: str,
    data_dir: Path,
    settings: VimSettings | None = None,
    home: Path | None = None,
    controller_id: str = "esc",
) -> VimDriver:
    """The driver named `name`, keeping its state under `data_dir`, configured by
    `settings` (the [vim] defaults when None) with relative paths in `home`; its
    instances carry `controller_id`'s tags."""
    drivers = installed_drivers()
    if name not in drivers:
        raise VimError(
            f"unknown VIM driver {name!r}: set [vim] driver in esc.toml to one of: "
            f"{', '.join(sorted(drivers))}"
        )
    try:
        cls = drivers[name].load()
    except ModuleNotFoundError as exc:
        # The driver is here but its SDK is not: name the extra that brings it.
        raise VimError(
            f"the {name} VIM driver needs the Python package {exc.name!r}, which is not "
            f"installed: pip install 'esc[{name}]'"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, VimDriver) and cls.name == name):
        raise VimError(f"entry point {drivers[name].value} is no VimDriver named {name!r}")
    if settings is None:
        from esc.config import VimSettings

        settings = VimSettings()
    driver = cls.from_settings(data_dir / name, settings, home or data_dir)
    driver.controller_id = controller_id
    return driver
