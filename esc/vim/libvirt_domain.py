"""The libvirt domain XML of a VM, and the ESC record kept in the domain's metadata.

The record (`<esc:instance>` under the ESC namespace in `<metadata>`) is what
makes a domain this controller's: the instance's tags (controller id and VM id),
where its own files are, its fixed addresses, why its last start failed, and the
metadata the driver was asked to keep on the VM (`<esc:meta key=...>`).
A domain without it is someone else's and is never touched; its name and UUID
are only how it is looked up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

NAMESPACE = "urn:x-esc:libvirt:1"
PREFIX = "esc"
RECORD = "instance"


@dataclass(frozen=True)
class Record:
    """What the domain's metadata says of it."""

    tags: dict[str, str]
    storage: str = ""  # the VM's own directory (removed with it)
    ips: tuple[str, ...] = ()  # fixed addresses, in NIC order
    failure: str = ""  # libvirt's reason the last start failed; empty once one worked
    metadata: dict[str, str] = field(default_factory=dict)  # VimDriver.set_vm_metadata's


@dataclass(frozen=True)
class Nic:
    kind: str  # "network" (a libvirt network) or "bridge" (a host bridge)
    source: str
    mac: str
    model: str = "virtio"
    vlan: int | None = None


@dataclass(frozen=True)
class Disk:
    path: Path
    serial: str = ""


@dataclass(frozen=True)
class Domain:
    """Everything the domain XML is made of."""

    name: str
    uuid: str
    domain_type: str
    title: str
    vcpus: int
    memory_mib: int
    seed: Path
    console: Path
    record: Record
    disk: Disk | None = None
    volumes: tuple[Disk, ...] = ()
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    nics: tuple[Nic, ...] = field(default_factory=tuple)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def record_element(record: Record, namespaced: bool = True) -> etree._Element:
    """The record; `namespaced` False: its elements without the namespace, as
    virDomainSetMetadata takes it (libvirt puts it in the namespace itself)."""

    def name(tag: str) -> str:
        return f"{{{NAMESPACE}}}{tag}" if namespaced else tag

    nsmap = {PREFIX: NAMESPACE} if namespaced else None
    element = etree.Element(name(RECORD), nsmap=nsmap)
    for key, value in record.tags.items():
        _sub(element, name("tag"), value, key=key)
    if record.storage:
        _sub(element, name("storage"), record.storage)
    for ip in record.ips:
        _sub(element, name("ip"), ip)
    if record.failure:
        _sub(element, name("failure"), record.failure)
    for key, value in sorted(record.metadata.items()):
        _sub(element, name("meta"), value, key=key)
    return element


def record_xml(record: Record) -> str:
    """The record as virDomainSetMetadata takes it."""
    return etree.tostring(record_element(record, namespaced=False), encoding="unicode")


def parse_record(xml: str) -> Record | None:
    """The record in what virDomainGetMetadata returned; None when it is no record."""
    try:
        element = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError:
        return None
    if etree.QName(element).localname != RECORD:
        return None

    def children(name: str) -> list[etree._Element]:
        return [c for c in element if isinstance(c.tag, str) and etree.QName(c).localname == name]

    tags = {c.get("key", ""): c.text or "" for c in children("tag")}
    storage = next((c.text or "" for c in children("storage")), "")
    failure = next((c.text or "" for c in children("failure")), "")
    metadata = {c.get("key", ""): c.text or "" for c in children("meta")}
    ips = tuple(c.text or "" for c in children("ip"))
    return Record(tags, storage, ips, failure, metadata)


def _disk(devices: etree._Element, path: Path, target: str, serial: str = "") -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus="virtio")
    if serial:
        _sub(disk, "serial", serial)


def virtio_name(index: int) -> str:
    """vda, vdb, ... vdz, vdaa, ...: the index-th virtio disk."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"vd{letters}"


def domain_xml(domain: Domain) -> str:
    root = etree.Element("domain", type=domain.domain_type)
    _sub(root, "name", domain.name)
    _sub(root, "uuid", domain.uuid)
    _sub(root, "title", domain.title)
    metadata = _sub(root, "metadata")
    metadata.append(record_element(domain.record))
    _sub(root, "memory", str(domain.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(domain.vcpus))
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm")
    if domain.kernel is not None:
        _sub(os_, "kernel", str(domain.kernel))
        if domain.initrd is not None:
            _sub(os_, "initrd", str(domain.initrd))
        _sub(os_, "cmdline", domain.cmdline)
    if domain.disk is not None:
        _sub(os_, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")  # the guest hears a graceful shutdown through ACPI
    _sub(features, "apic")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    # A crashed guest stays off, so it is reported (ERROR), not rebooted behind ESC's back.
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    disks = ([domain.disk] if domain.disk else []) + list(domain.volumes)
    for index, disk in enumerate(disks):
        _disk(devices, disk.path, virtio_name(index), disk.serial)
    # IDE: what QEMU's default PC machine has, and every cloud image reads.
    cdrom = _sub(devices, "disk", type="file", device="cdrom")
    _sub(cdrom, "driver", name="qemu", type="raw")
    _sub(cdrom, "source", file=str(domain.seed))
    _sub(cdrom, "target", dev="hda", bus="ide")
    _sub(cdrom, "readonly")
    for nic in domain.nics:
        interface = _sub(devices, "interface", type=nic.kind)
        _sub(interface, "mac", address=nic.mac)
        _sub(interface, "source", **{nic.kind: nic.source})
        _sub(interface, "model", type=nic.model)
        if nic.vlan is not None:
            _sub(_sub(interface, "vlan"), "tag", id=str(nic.vlan))
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(domain.console), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="file")
    _sub(console, "source", path=str(domain.console), append="on")
    _sub(console, "target", type="serial", port="0")
    return etree.tostring(root, encoding="unicode", pretty_print=True)
