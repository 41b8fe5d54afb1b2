"""What the VMware driver keeps in a VM's extraConfig (its VMX options).

The tags: `esc.controller` and `esc.vm_id`, set in the clone's own spec so that the VM
is never without them, and copied nowhere else. Never `guestinfo.*` keys: the guest can
write those (vmtoolsd --cmd "info-set ..."), so a guest could claim to be another VM;
the other keys only vCenter's users can change.

Day-0, for cloud-init's VMware datasource (cloud-init 21.3 and later, in any stock cloud
image), so an image needs nothing of ESC's:
- `guestinfo.userdata`: a `#cloud-config` whose write_files puts each day-0 file in
  [vim.vmware] day0_dir;
- `guestinfo.metadata`: the instance id (the VM id), the host name, and the network
  config (version 2) with each interface's fixed IP, its NIC matched by MAC address
  (so it is written once vCenter has given the NICs their MACs);
both base64 (`.encoding` keys), as the datasource reads them.

`esc.meta.KEY`: what VimDriver.set_vm_metadata keeps on the VM (the witness record of a
pair of node VMs), out of the guest's reach like the tags; an empty value is no value
(vCenter removes an option set to "").

`esc.error`: why vCenter failed the VM's last power-on; set by the driver, cleared by
the next power-on that works, so that any driver object reports the VM in ERROR.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

import yaml

from esc.vim.base import TAG_CONTROLLER, TAG_VM, Interface, PermanentVimError

# The driver's tags (esc.vim.base's names) as extraConfig keys.
TAG_KEYS = {TAG_CONTROLLER: "esc.controller", TAG_VM: "esc.vm_id"}
ERROR_KEY = "esc.error"
META_PREFIX = "esc.meta."
USERDATA = "guestinfo.userdata"
METADATA = "guestinfo.metadata"
ENCODING = ".encoding"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}\Z")
_HOST_LABEL = re.compile(r"[^a-z0-9-]+")


def as_dict(extra_config: Iterable[Any] | None) -> dict[str, str]:
    return {o.key: str(o.value) for o in extra_config or ()}


def tags_of(options: dict[str, str]) -> dict[str, str]:
    """The tags an extraConfig holds, by their esc.vim.base names ({} if none)."""
    return {tag: options[key] for tag, key in TAG_KEYS.items() if key in options}


def tag_options(tags: dict[str, str]) -> dict[str, str]:
    return {TAG_KEYS[tag]: value for tag, value in tags.items()}


def vm_metadata_of(options: dict[str, str]) -> dict[str, str]:
    """The driver's metadata an extraConfig holds, by key."""
    return {
        key.removeprefix(META_PREFIX): value
        for key, value in options.items()
        if key.startswith(META_PREFIX) and value
    }


def vm_metadata_options(changes: dict[str, str | None]) -> dict[str, str]:
    """The options that set (or, for None, remove) each key of `changes`."""
    return {META_PREFIX + k: "" if v is None else str(v) for k, v in changes.items()}


def _encoded(key: str, text: str) -> dict[str, str]:
    return {key: base64.b64encode(text.encode()).decode(), key + ENCODING: "base64"}


def userdata(day0_config: dict[str, Any], directory: str) -> dict[str, str]:
    """The options that make cloud-init write the day-0 files ({} when there are none)."""
    if not day0_config:
        return {}
    files = []
    for name, value in sorted(day0_config.items()):
        if not _FILE_NAME.match(name):
            raise PermanentVimError(
                f"day-0 file name {name!r} is no plain file name (letters, digits, '.', '_', "
                "'-'): cloud-init writes it into [vim.vmware] day0_dir"
            )
        text = value if isinstance(value, str) else json.dumps(value)
        files.append(
            {
                "path": f"{directory.rstrip('/')}/{name}",
                "encoding": "b64",
                "content": base64.b64encode(text.encode()).decode(),
                "permissions": "0644",
            }
        )
    cloud_config = "#cloud-config\n" + yaml.safe_dump({"write_files": files}, sort_keys=False)
    return _encoded(USERDATA, cloud_config)


def fixed_addresses(
    interfaces: Iterable[Interface],
) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface | None]:
    """Each interface's fixed address (with its prefix; none given: a host address)."""
    found = []
    for interface in interfaces:
        if interface.ip is None:
            found.append(None)
            continue
        try:
            found.append(ipaddress.ip_interface(interface.ip))
        except ValueError:
            raise PermanentVimError(
                f"interface on {interface.network!r}: {interface.ip!r} is no IP address "
                "(write it as 10.0.0.5/24)"
            ) from None
    return found


def metadata(
    vm_id: str, name: str, interfaces: tuple[Interface, ...], macs: list[str]
) -> dict[str, str]:
    """The options that give the guest its instance id, host name and network config."""
    data: dict[str, Any] = {
        "instance-id": vm_id,
        "local-hostname": _HOST_LABEL.sub("-", name.lower()).strip("-")[:63] or "vm",
    }
    addresses = fixed_addresses(interfaces)
    if any(addresses):
        ethernets = {}
        for i, (address, mac) in enumerate(zip(addresses, macs, strict=True)):
            ethernet: dict[str, Any] = {"match": {"macaddress": mac}}
            if address is None:
                ethernet["dhcp4"] = True
            else:
                ethernet.update({"dhcp4": False, "addresses": [str(address)]})
            ethernets[f"nic{i}"] = ethernet
        data["network"] = {"version": 2, "ethernets": ethernets}
    return _encoded(METADATA, json.dumps(data, sort_keys=True))


def metadata_addresses(options: dict[str, str]) -> list[str]:
    """The fixed IPs (without prefix) the guest was given, in interface order."""
    try:
        data = json.loads(base64.b64decode(options.get(METADATA, "")) or "{}")
        ethernets = data.get("network", {}).get("ethernets", {}).values()
        return [
            str(ipaddress.ip_interface(address).ip)
            for ethernet in ethernets
            for address in ethernet.get("addresses", [])
        ]
    except (ValueError, TypeError, AttributeError):
        return []  # metadata not written by this driver: no fixed IPs of ours
