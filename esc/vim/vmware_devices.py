"""The virtual devices a VM's clone spec changes from its template's: its NICs (one per
interface, on the port group or network of that name; the template's own NICs are
removed when the spec names interfaces, kept when it names none) and its data disks
(thin, on the template's first SCSI controller, or on a new paravirtual one).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from esc.vim.base import Interface, PermanentVimError, Volume

Device = vim.vm.device
NIC_MODELS = {
    "vmxnet3": Device.VirtualVmxnet3,
    "e1000": Device.VirtualE1000,
    "e1000e": Device.VirtualE1000e,
}
SCSI_RESERVED_UNIT = 7  # the controller's own unit
SCSI_UNITS = 16


def nic_model(interface: Interface, default: str) -> type:
    """An interface's model when it names a VMware one, else [vim.vmware] nic_model."""
    return NIC_MODELS.get(interface.model.lower(), NIC_MODELS[default])


def nic_backing(network: Any, props: dict[str, Any]) -> Any:
    """How a NIC attaches to `network`: a distributed port group by its switch, an NSX
    network by its id, a standard port group by name."""
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        switch = props["config.distributedVirtualSwitch"]
        return Device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=switch.uuid, portgroupKey=props["key"])
        )
    if isinstance(network, vim.OpaqueNetwork):
        summary = props["summary"]
        return Device.VirtualEthernetCard.OpaqueNetworkBackingInfo(
            opaqueNetworkId=summary.opaqueNetworkId, opaqueNetworkType=summary.opaqueNetworkType
        )
    return Device.VirtualEthernetCard.NetworkBackingInfo(deviceName=props["name"], network=network)


NETWORK_PATHS = {
    vim.dvs.DistributedVirtualPortgroup: ["name", "key", "config.distributedVirtualSwitch"],
    vim.OpaqueNetwork: ["name", "summary"],
}


def nic_changes(template_devices: list[Any], nics: list[tuple[type, Any]]) -> list[Any]:
    """Remove the template's NICs and add `nics` ((model class, backing) in interface
    order); none asked: the template's NICs stay as they are."""
    if not nics:
        return []
    changes = [
        Device.VirtualDeviceSpec(operation="remove", device=d)
        for d in template_devices
        if isinstance(d, Device.VirtualEthernetCard)
    ]
    for i, (model, backing) in enumerate(nics):
        card = model(
            key=-100 - i,
            backing=backing,
            addressType="generated",
            connectable=Device.VirtualDevice.ConnectInfo(
                startConnected=True, connected=True, allowGuestControl=True
            ),
        )
        changes.append(Device.VirtualDeviceSpec(operation="add", device=card))
    return changes


def disk_changes(template_devices: list[Any], volumes: tuple[Volume, ...]) -> list[Any]:
    """Add one thin disk per volume, created with the VM (and deleted with it)."""
    if not volumes:
        return []
    changes = []
    controllers = [d for d in template_devices if isinstance(d, Device.VirtualSCSIController)]
    if controllers:
        controller = min(controllers, key=lambda c: c.busNumber)
        key = controller.key
        used = {d.unitNumber for d in template_devices if d.controllerKey == key}
    else:  # a template without SCSI (IDE or NVMe disks only) gets bus 0
        key, used = -200, set()
        controller = Device.ParaVirtualSCSIController(key=key, busNumber=0, sharedBus="noSharing")
        changes.append(Device.VirtualDeviceSpec(operation="add", device=controller))
    free = [u for u in range(SCSI_UNITS) if u != SCSI_RESERVED_UNIT and u not in used]
    if len(volumes) > len(free):
        raise PermanentVimError(
            f"{len(volumes)} volumes asked, but the template's SCSI controller has "
            f"{len(free)} free units"
        )
    for i, (volume, unit) in enumerate(zip(volumes, free, strict=False)):
        if volume.size_gb < 1:
            raise PermanentVimError(f"volume {volume.name!r}: size_gb must be at least 1")
        disk = Device.VirtualDisk(
            key=-300 - i,
            controllerKey=key,
            unitNumber=unit,
            capacityInKB=volume.size_gb * 2**20,
            capacityInBytes=volume.size_gb * 2**30,
            backing=Device.VirtualDisk.FlatVer2BackingInfo(
                diskMode="persistent", thinProvisioned=True, fileName=""
            ),
        )
        changes.append(
            Device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)
        )
    return changes


def macs(devices: list[Any]) -> list[str]:
    """The MAC addresses of a VM's NICs, in device order (the order they were added)."""
    cards = sorted(
        (d for d in devices if isinstance(d, Device.VirtualEthernetCard)), key=lambda d: d.key
    )
    return [c.macAddress or "" for c in cards]


def disks(devices: list[Any]) -> list[Any]:
    return [d for d in devices if isinstance(d, Device.VirtualDisk)]
