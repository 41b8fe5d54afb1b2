"""The vmware driver: VMs cloned from templates on a VMware vCenter, through pyVmomi.

An image is a template of the datacenter (or any VM of [vim.vmware] templates_folder);
a flavor is a name [vim.vmware] flavors gives vCPUs and memory, since vCenter has no
flavors. Creating a VM is one clone (into vm_folder, on the cluster, host, resource pool
and datastore its placement or the settings name, with its NICs, data disks, tags and
day-0 in the clone's own spec), a reconfiguration where vCenter left the clone unlike
the spec (the flavor's hardware; the network metadata, which needs the MACs vCenter
gave), and a power-on; each step is skipped when already done, so a create asked again
after a crash or a timeout finishes the same VM.

The VM is this controller's by its tags in extraConfig (esc.vim.vmware_extraconfig),
and only by them: it is looked up by them (its name, `NAME-VMID`, only helps people),
and a VM without both tags is never stopped, started or deleted. A stop asks the guest
to shut down when VMware Tools run in it and powers the VM off after
[vim.vmware] shutdown_timeout (or at once without tools); a reboot is such a stop and a
power-on with tools, a reset without; a power-off (a fence) is vCenter's PowerOffVM_Task
at once, the guest asked nothing; a delete powers off and destroys the VM with its
disks. vCenter's faults reach the engine as esc.vim.vmware_session maps them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVmomi import vim, vmodl

from esc.config import VimSettings, VmwareFlavor, VmwareSettings
from esc.vim.base import (
    TAG_CONTROLLER,
    TAG_VM,
    InstanceState,
    InstanceStatus,
    PermanentVimError,
    Placement,
    TransientVimError,
    UnknownFlavor,
    VimDriver,
    VmSpec,
    check_metadata_key,
    check_vm_id,
)
from esc.vim.vmware_devices import (
    NETWORK_PATHS,
    disk_changes,
    macs,
    nic_backing,
    nic_changes,
    nic_model,
)
from esc.vim.vmware_extraconfig import (
    ERROR_KEY,
    as_dict,
    fixed_addresses,
    metadata,
    metadata_addresses,
    tag_options,
    tags_of,
    userdata,
    vm_metadata_of,
    vm_metadata_options,
)
from esc.vim.vmware_inventory import Inventory, properties
from esc.vim.vmware_session import TRANSIENT_FAULTS, VcenterSession, fault_words

# What the driver reads of a VM; a scan for the tags reads only SCAN_PATHS of each VM.
VM_PATHS = [
    "name",
    "config.extraConfig",
    "config.template",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "runtime.powerState",
    "runtime.connectionState",
    "guest.toolsRunningStatus",
    "guest.ipAddress",
    "guest.net",
]
SCAN_PATHS = ["name", "config.extraConfig", "config.template"]
NAME_LIMIT = 80  # vCenter's longest VM name
ERROR_LIMIT = 2000  # the longest esc.error kept: vCenter's words, not a log
POWER_POLL = 0.2
# Faults a step passes on untouched: the session logs in again, or the engine retries.
PASS_ON = (*TRANSIENT_FAULTS, vim.fault.NoPermission, vmodl.fault.ManagedObjectNotFound)


@dataclass
class _Found:
    """One of this controller's VMs as vCenter has it now."""

    vm: Any
    props: dict[str, Any]
    options: dict[str, str]  # its extraConfig

    @property
    def power(self) -> str:
        return str(self.props.get("runtime.powerState", ""))

    @property
    def tools_running(self) -> bool:
        return self.props.get("guest.toolsRunningStatus") == "guestToolsRunning"


def vm_name(spec: VmSpec) -> str:
    """NAME-VMID, cut to vCenter's limit from the name's end: the VM id stays whole."""
    room = NAME_LIMIT - len(spec.vm_id) - 1
    if room < 1 or not spec.name:
        return spec.vm_id[:NAME_LIMIT]
    return f"{spec.name[:room]}-{spec.vm_id}"


def _option_values(options: dict[str, str]) -> list[Any]:
    return [vim.option.OptionValue(key=k, value=v) for k, v in options.items()]


def _guest_addresses(props: dict[str, Any]) -> list[str]:
    """What VMware Tools report the guest's addresses are, link-local ones left out."""
    reported = [props.get("guest.ipAddress")]
    reported += [ip for nic in props.get("guest.net") or () for ip in nic.ipAddress or ()]
    found = []
    for address in reported:
        with contextlib.suppress(ValueError, TypeError):
            if not ipaddress.ip_address(address).is_link_local:
                found.append(str(address))
    return found


class VmwareVim(VimDriver):
    name = "vmware"

    def __init__(self, settings: VmwareSettings, home: Path) -> None:
        self.settings = settings
        self.session = VcenterSession(settings, home)
        self._moids: dict[str, str] = {}  # VM id -> managed object id, checked at each use
        self._guard = threading.Lock()

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> VmwareVim:
        if problems := settings.vmware.problems():
            raise PermanentVimError("; ".join(problems))
        return cls(settings.vmware, home)

    def close(self) -> None:
        self.session.close()

    def _inventory(self) -> Inventory:
        return Inventory(self.session.content, self.settings.datacenter)

    # images and flavors -----------------------------------------------------------------

    def validate_image(self, image: str) -> None:
        folder = self.settings.templates_folder
        self.session.call(
            f"look up image {image!r}", lambda: self._inventory().image(image, folder)
        )

    def validate_flavor(self, flavor: str) -> None:
        self._flavor(flavor)

    def _flavor(self, flavor: str) -> VmwareFlavor:
        try:
            return self.settings.flavors[flavor]
        except KeyError:
            raise UnknownFlavor(
                f"unknown flavor {flavor!r}; the vCenter's flavors are "
                f"{', '.join(sorted(self.settings.flavors))} ([vim.vmware] flavors)"
            ) from None

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        check_vm_id(spec.vm_id)
        flavor = self._flavor(spec.flavor)
        self._check_spec(spec)
        return self.session.call(f"create VM {spec.vm_id}", lambda: self._create(spec, flavor))

    def _create(self, spec: VmSpec, flavor: VmwareFlavor) -> InstanceStatus:
        deadline = self.session.deadline()
        found = self._find(spec.vm_id)
        if found is None:
            inventory = self._inventory()
            template = inventory.image(spec.image, self.settings.templates_folder)
            found = self._clone(inventory, template, spec, flavor, deadline)
        if found.power == "poweredOn":
            return self._status(spec.vm_id, found)
        found = self._configure(found, spec, flavor, deadline)
        return self._power_on(found, spec.vm_id, deadline)

    def start_vm(self, vm_id: str) -> InstanceStatus:
        def start() -> InstanceStatus:
            found = self._require(vm_id)
            if found.power == "poweredOn":
                return self._status(vm_id, found)
            return self._power_on(found, vm_id, self.session.deadline())

        check_vm_id(vm_id)
        return self.session.call(f"start VM {vm_id}", start)

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        def stop() -> InstanceStatus:
            found = self._find(vm_id)
            if found is None:
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            self._stop(found, vm_id, self.session.deadline())
            return self._status(vm_id, self._look(found.vm, vm_id))

        check_vm_id(vm_id)
        return self.session.call(f"stop VM {vm_id}", stop)

    def power_off(self, vm_id: str) -> InstanceStatus:
        def power_off() -> InstanceStatus:
            found = self._find(vm_id)
            if found is None:
                return InstanceStatus(vm_id, InstanceState.ABSENT)
            if found.power != "poweredOff":
                self._power_off(found, vm_id, self.session.deadline())
            return self._status(vm_id, self._look(found.vm, vm_id))

        check_vm_id(vm_id)
        return self.session.call(f"power off VM {vm_id}", power_off)

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        def reboot() -> InstanceStatus:
            found = self._require(vm_id)
            deadline = self.session.deadline()
            if found.power == "poweredOn" and not found.tools_running:
                self.session.wait(found.vm.ResetVM_Task(), f"reset VM {vm_id}", deadline)
                return self._status(vm_id, self._look(found.vm, vm_id))
            self._stop(found, vm_id, deadline)
            return self._power_on(self._look(found.vm, vm_id) or found, vm_id, deadline)

        check_vm_id(vm_id)
        return self.session.call(f"reboot VM {vm_id}", reboot)

    def delete_vm(self, vm_id: str) -> None:
        def delete() -> None:
            found = self._find(vm_id)
            if found is None:
                return
            deadline = self.session.deadline()
            try:
                if found.power != "poweredOff":  # a guest shutdown is no use: its disks go too
                    self._power_off(found, vm_id, deadline)
                self.session.wait(found.vm.Destroy_Task(), f"destroy VM {vm_id}", deadline)
            except vmodl.fault.ManagedObjectNotFound:
                pass  # destroyed meanwhile: what was asked
            with self._guard:
                self._moids.pop(vm_id, None)

        check_vm_id(vm_id)
        self.session.call(f"delete VM {vm_id}", delete)

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        check_vm_id(vm_id)
        return self.session.call(f"read VM {vm_id}", lambda: self._status(vm_id, self._find(vm_id)))

    def vm_metadata(self, vm_id: str) -> dict[str, str]:
        check_vm_id(vm_id)
        return self.session.call(
            f"read the metadata of VM {vm_id}", lambda: vm_metadata_of(self._require(vm_id).options)
        )

    def set_vm_metadata(self, vm_id: str, changes: Mapping[str, str | None]) -> None:
        def update() -> None:
            found = self._require(vm_id)
            change = vim.vm.ConfigSpec(extraConfig=_option_values(vm_metadata_options(changes)))
            what = f"write the metadata of VM {vm_id}"
            self.session.wait(found.vm.ReconfigVM_Task(spec=change), what, self.session.deadline())

        check_vm_id(vm_id)
        changes = dict(changes)
        for key in changes:
            check_metadata_key(key)
        self.session.call(f"write the metadata of VM {vm_id}", update)

    def list_instances(self) -> list[str]:
        def own() -> list[str]:
            ids = set()
            for _, props in self._scan():
                tags = tags_of(as_dict(props.get("config.extraConfig")))
                if tags.get(TAG_CONTROLLER) == self.controller_id and TAG_VM in tags:
                    ids.add(tags[TAG_VM])
            return sorted(ids)

        return self.session.call("list the VMs", own)

    def check(self) -> None:
        s = self.settings

        def probe() -> None:
            content = self.session.content
            if content.about.apiType != "VirtualCenter":
                raise PermanentVimError(
                    f"{self.session.endpoint} is {content.about.fullName}, not vCenter: "
                    "cloning templates needs vCenter; point [vim.vmware] host at it"
                )
            inventory = self._inventory()
            inventory.folder(s.vm_folder, "vm_folder")
            inventory.images(s.templates_folder)
            if s.cluster:
                inventory.resource_pool(s.resource_pool, inventory.compute(s.cluster))
            if s.datastore:
                inventory.datastore(s.datastore)

        self.session.call("check the settings", probe)

    # finding this controller's VMs ------------------------------------------------------

    def _scan(self) -> list[tuple[Any, dict[str, Any]]]:
        """Every VM of the datacenter (templates left out) with its extraConfig."""
        content = self.session.content
        found = properties(
            content, vim.VirtualMachine, SCAN_PATHS, under=self._inventory().datacenter.vmFolder
        )
        return [(vm, props) for vm, props in found if not props.get("config.template")]

    def _look(self, vm: Any, vm_id: str) -> _Found | None:
        """`vm` as it is now, if it still is this controller's VM `vm_id`."""
        try:
            found = properties(self.session.content, vim.VirtualMachine, VM_PATHS, objects=[vm])
        except vmodl.fault.ManagedObjectNotFound:
            return None
        if not found or found[0][1].get("config.template"):
            return None
        options = as_dict(found[0][1].get("config.extraConfig"))
        if tags_of(options) != self.tags(vm_id):
            return None
        return _Found(vm, found[0][1], options)

    def _find(self, vm_id: str) -> _Found | None:
        """This controller's VM `vm_id` (by its tags), None when vCenter has none."""
        with self._guard:
            moid = self._moids.get(vm_id)
        if moid is not None:
            found = self._look(vim.VirtualMachine(moid, self.session.stub), vm_id)
            if found is not None:
                return found
            with self._guard:
                self._moids.pop(vm_id, None)
        tags = self.tags(vm_id)
        owned = [
            (vm, props)
            for vm, props in self._scan()
            if tags_of(as_dict(props.get("config.extraConfig"))) == tags
        ]
        if len(owned) > 1:
            names = ", ".join(sorted(str(props.get("name")) for _, props in owned))
            raise PermanentVimError(
                f"{len(owned)} VMs carry the tags of VM {vm_id} ({names}): a copy of it was "
                "made with its extraConfig; remove esc.controller and esc.vm_id from the copy"
            )
        found = self._look(owned[0][0], vm_id) if owned else None
        if found is not None:
            with self._guard:
                self._moids[vm_id] = found.vm._moId
        return found

    def _require(self, vm_id: str) -> _Found:
        found = self._find(vm_id)
        if found is None:
            raise PermanentVimError(
                f"VM {vm_id} does not exist on vCenter {self.settings.host} (no VM carries "
                "its tags); create it again"
            )
        return found

    # creating ---------------------------------------------------------------------------

    def _check_spec(self, spec: VmSpec) -> None:
        """Refuse what vCenter cannot do before asking it anything."""
        for interface in spec.interfaces:
            if interface.floating_ip:
                raise PermanentVimError(
                    f"interface on {interface.network!r}: vCenter has no floating IPs; give "
                    "the interface a fixed ip instead"
                )
            if interface.vlan is not None:
                raise PermanentVimError(
                    f"interface on {interface.network!r}: on vCenter a VLAN is its port "
                    f"group's; name the port group of VLAN {interface.vlan} as the network"
                )
        fixed_addresses(spec.interfaces)
        userdata(spec.day0_config, self.settings.day0_dir)

    def _clone(
        self,
        inventory: Inventory,
        template: Any,
        spec: VmSpec,
        flavor: VmwareFlavor,
        deadline: float,
    ) -> _Found:
        s = self.settings
        content = inventory.content
        ((_, source),) = properties(
            content,
            vim.VirtualMachine,
            ["config.hardware.device", "runtime.host"],
            objects=[template],
        )
        devices = source.get("config.hardware.device") or []
        location = self._location(inventory, spec.placement, source.get("runtime.host"))
        options = {**tag_options(self.tags(spec.vm_id)), **userdata(spec.day0_config, s.day0_dir)}
        if not any(fixed_addresses(spec.interfaces)):
            # No NIC needs matching by MAC: the metadata is complete before vCenter gives any.
            options.update(metadata(spec.vm_id, spec.name, spec.interfaces, []))
        config = vim.vm.ConfigSpec(
            numCPUs=flavor.vcpus,
            memoryMB=flavor.memory_mb,
            extraConfig=_option_values(options),
            deviceChange=nic_changes(devices, self._nics(inventory, spec))
            + disk_changes(devices, spec.volumes),
        )
        clone = vim.vm.CloneSpec(location=location, config=config, powerOn=False, template=False)
        folder = inventory.folder(s.vm_folder, "vm_folder")
        name = vm_name(spec)
        what = f"clone image {spec.image!r} into VM {name!r}"
        try:
            vm = self.session.wait(
                template.CloneVM_Task(folder=folder, name=name, spec=clone), what, deadline
            )
        except vim.fault.DuplicateName as fault:
            found = self._find(spec.vm_id)
            if found is not None:
                return found  # an earlier attempt's clone, finished meanwhile
            if content.searchIndex.FindChild(folder, name) is not None:
                raise PermanentVimError(
                    f"vCenter cannot {what}: a VM of that name that is not this controller's "
                    f"is in its folder ({fault_words(fault)}); rename or move it"
                ) from None
            raise TransientVimError(
                f"vCenter cannot {what} yet: an earlier clone of that name is still under way "
                f"({fault_words(fault)})"
            ) from None
        found = self._look(vm, spec.vm_id)
        if found is None:
            raise TransientVimError(f"the VM vCenter cloned for VM {spec.vm_id} vanished at once")
        with self._guard:
            self._moids[spec.vm_id] = vm._moId
        return found

    def _location(self, inventory: Inventory, placement: Placement, template_host: Any) -> Any:
        """Where the clone goes: the placement's cluster or host, else the settings', else
        the template's; the settings' resource pool there; the placement's or the
        settings' datastore, else the template's."""
        s = self.settings
        cluster = placement.cluster or s.cluster
        host = None
        if cluster:
            compute = inventory.compute(cluster)
            if placement.host:
                host = inventory.host(placement.host, compute, f"cluster {cluster!r}")
        elif placement.host:
            host = inventory.host(placement.host, inventory.datacenter.hostFolder, inventory.where)
            compute = host.parent
        elif template_host is not None:
            compute = template_host.parent
        else:
            raise PermanentVimError(
                "the template is on no host to place its clones by: set [vim.vmware] cluster"
            )
        datastore = placement.datastore or s.datastore
        return vim.vm.RelocateSpec(
            pool=inventory.resource_pool(s.resource_pool, compute),
            host=host,
            datastore=inventory.datastore(datastore) if datastore else None,
        )

    def _nics(self, inventory: Inventory, spec: VmSpec) -> list[tuple[type, Any]]:
        if not spec.interfaces:
            return []
        networks = inventory.networks()
        nics = []
        for interface in spec.interfaces:
            network = inventory.network(interface.network, networks)
            paths = next(
                (p for kind, p in NETWORK_PATHS.items() if isinstance(network, kind)), ["name"]
            )
            ((_, props),) = properties(inventory.content, type(network), paths, objects=[network])
            nics.append(
                (nic_model(interface, self.settings.nic_model), nic_backing(network, props))
            )
        return nics

    def _configure(
        self, found: _Found, spec: VmSpec, flavor: VmwareFlavor, deadline: float
    ) -> _Found:
        """Make the clone what the spec asks where vCenter did not (nothing on a VM that
        already is): the flavor's hardware, the metadata with the NICs' MACs."""
        nic_macs = macs(found.props.get("config.hardware.device") or [])
        if spec.interfaces and len(nic_macs) < len(spec.interfaces):
            raise PermanentVimError(
                f"VM {spec.vm_id} has {len(nic_macs)} NICs for {len(spec.interfaces)} "
                "interfaces: someone removed some; delete the VM and create it again"
            )
        wanted = metadata(spec.vm_id, spec.name, spec.interfaces, nic_macs[: len(spec.interfaces)])
        options = {k: v for k, v in wanted.items() if found.options.get(k) != v}
        hardware = (
            found.props.get("config.hardware.numCPU"),
            found.props.get("config.hardware.memoryMB"),
        )
        if not options and hardware == (flavor.vcpus, flavor.memory_mb):
            return found
        change = vim.vm.ConfigSpec(
            numCPUs=flavor.vcpus, memoryMB=flavor.memory_mb, extraConfig=_option_values(options)
        )
        what = f"reconfigure VM {spec.vm_id} as flavor {spec.flavor!r}"
        self.session.wait(found.vm.ReconfigVM_Task(spec=change), what, deadline)
        return self._look(found.vm, spec.vm_id) or found

    # power ------------------------------------------------------------------------------

    def _power_on(self, found: _Found, vm_id: str, deadline: float) -> InstanceStatus:
        """Power the VM on; when vCenter fails it, its words are kept on the VM (so it is in
        ERROR for any driver object) and raised."""
        try:
            self.session.wait(found.vm.PowerOnVM_Task(), f"power on VM {vm_id}", deadline)
        except vim.fault.InvalidPowerState:
            pass  # powered on meanwhile: what was asked
        except PASS_ON:
            raise
        except vmodl.MethodFault as fault:
            words = fault_words(fault)
            self._set_options(found, {ERROR_KEY: words[:ERROR_LIMIT]}, vm_id, deadline)
            raise PermanentVimError(f"vCenter failed to power on VM {vm_id}: {words}") from None
        if found.options.get(ERROR_KEY):
            self._set_options(found, {ERROR_KEY: ""}, vm_id, deadline)
        return self._status(vm_id, self._look(found.vm, vm_id))

    def _set_options(
        self, found: _Found, options: dict[str, str], vm_id: str, deadline: float
    ) -> None:
        """Record the driver's own options on the VM; a failure here does not hide the
        error the caller reports."""
        change = vim.vm.ConfigSpec(extraConfig=_option_values(options))
        with contextlib.suppress(vmodl.MethodFault, TransientVimError):
            self.session.wait(found.vm.ReconfigVM_Task(spec=change), f"mark VM {vm_id}", deadline)

    def _stop(self, found: _Found, vm_id: str, deadline: float) -> None:
        """Shut the guest down (VMware Tools running), powering the VM off when it is not
        down within [vim.vmware] shutdown_timeout; without tools, power it off at once."""
        if found.power == "poweredOff":
            return
        grace = self.settings.shutdown_timeout
        if found.power == "poweredOn" and found.tools_running and grace > 0:
            try:
                found.vm.ShutdownGuest()
            except (vim.fault.ToolsUnavailable, vim.fault.InvalidState):
                pass  # tools stopped meanwhile, or the VM is off: power off below
            else:
                if self._wait_off(found.vm, min(deadline, time.monotonic() + grace)):
                    return
        self._power_off(found, vm_id, deadline)

    def _power_off(self, found: _Found, vm_id: str, deadline: float) -> None:
        with contextlib.suppress(vim.fault.InvalidPowerState):  # off meanwhile: as asked
            self.session.wait(found.vm.PowerOffVM_Task(), f"power off VM {vm_id}", deadline)

    def _wait_off(self, vm: Any, until: float) -> bool:
        content = self.session.content
        while True:
            ((_, props),) = properties(
                content, vim.VirtualMachine, ["runtime.powerState"], objects=[vm]
            )
            if props.get("runtime.powerState") == "poweredOff":
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(POWER_POLL)

    # status -----------------------------------------------------------------------------

    def _status(self, vm_id: str, found: _Found | None) -> InstanceStatus:
        if found is None:
            return InstanceStatus(vm_id, InstanceState.ABSENT)
        connection = str(found.props.get("runtime.connectionState", "connected"))
        if connection != "connected":
            return InstanceStatus(
                vm_id, InstanceState.ERROR, detail=f"vCenter reports the VM {connection}"
            )
        if found.power == "poweredOn":
            fixed = metadata_addresses(found.options)
            ips = tuple(dict.fromkeys([*fixed, *_guest_addresses(found.props)]))
            return InstanceStatus(vm_id, InstanceState.RUNNING, ips[0] if ips else None, "", ips)
        if found.options.get(ERROR_KEY):
            return InstanceStatus(vm_id, InstanceState.ERROR, detail=found.options[ERROR_KEY])
        detail = "suspended" if found.power == "suspended" else ""
        return InstanceStatus(vm_id, InstanceState.STOPPED, detail=detail)
