"""A cloud-init NoCloud seed: the ISO 9660 image, labelled `cidata`, that cloud-init
finds on a VM's CD-ROM and reads its instance's configuration from.

It holds `meta-data` (the instance id and host name), `user-data` (a
`#cloud-config` whose write_files puts each day-0 file under a directory of the
guest) and, when the VM has NICs, `network-config` (version 2: each NIC matched
by its MAC address, or, a VM's one NIC whose MAC is not known before the VM is
made, as the guest's only Ethernet NIC; a fixed address or DHCP). The ISO is
written with pycdlib (pure Python, so the controller's host needs no ISO tool),
with Rock Ridge and Joliet names, as `genisoimage -volid cidata -joliet -rock`
makes it.
"""

from __future__ import annotations

import io
import ipaddress
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from esc.vim.base import PermanentVimError

LABEL = "cidata"
# Day-0 files may hold secrets: readable by root alone, as cloud-init writes them.
DAY0_MODE = "0600"
_HOST_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class SeedNic:
    """What the guest is told of one NIC."""

    # "": not known before the VM is made (a CSP chooses it): the guest's only Ethernet
    # NIC, whatever the kernel named it.
    mac: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None  # None: DHCP
    gateway: str | None = None


class _Dumper(yaml.SafeDumper):
    """Multi-line text as YAML literal blocks: the seed stays readable as written."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def host_name(name: str) -> str:
    """A host name (one DNS label) made of a VM name."""
    label = _HOST_LABEL.sub("-", name.lower()).strip("-")[:63].strip("-")
    return label or "vm"


def day0_path(day0_dir: str, file_name: str) -> str:
    """Where the day-0 file `file_name` lands in the guest; a name that would leave
    `day0_dir` is refused."""
    path = posixpath.normpath(posixpath.join(day0_dir, file_name))
    inside = posixpath.normpath(day0_dir)
    if not file_name or file_name.startswith("/") or not path.startswith(inside.rstrip("/") + "/"):
        raise PermanentVimError(
            f"day-0 file name {file_name!r} is not a path inside {day0_dir}: "
            "use a plain file name (sub/dir/file.conf at most)"
        )
    return path


def user_data(day0_config: dict[str, Any], day0_dir: str) -> str:
    files = []
    for name, content in sorted(day0_config.items()):
        if not isinstance(content, str):
            raise PermanentVimError(
                f"day-0 file {name!r}: its content must be text, not {type(content).__name__}"
            )
        files.append(
            {
                "path": day0_path(day0_dir, name),
                "content": content,
                "owner": "root:root",
                "permissions": DAY0_MODE,
            }
        )
    return "#cloud-config\n" + (_yaml({"write_files": files}) if files else "{}\n")


def meta_data(instance_id: str, name: str) -> str:
    return _yaml({"instance-id": instance_id, "local-hostname": host_name(name)})


def network_config(nics: list[SeedNic]) -> str:
    if len(nics) > 1 and not all(nic.mac for nic in nics):
        raise PermanentVimError(
            "a NIC without a MAC address can be set up only as the VM's one NIC: with "
            f"{len(nics)} NICs the guest could not tell them apart"
        )
    ethernets: dict[str, Any] = {}
    for index, nic in enumerate(nics):
        match = {"macaddress": nic.mac} if nic.mac else {"name": "e*"}
        entry: dict[str, Any] = {"match": match, "set-name": f"eth{index}"}
        if nic.address is None:
            entry["dhcp4"] = True
        else:
            entry["addresses"] = [str(nic.address)]
            if nic.gateway:
                entry["routes"] = [{"to": "default", "via": nic.gateway}]
        ethernets[f"eth{index}"] = entry
    return _yaml({"version": 2, "ethernets": ethernets})


def seed_files(
    instance_id: str, name: str, day0_config: dict[str, Any], day0_dir: str, nics: list[SeedNic]
) -> dict[str, str]:
    """The files of the seed, by name."""
    files = {
        "meta-data": meta_data(instance_id, name),
        "user-data": user_data(day0_config, day0_dir),
    }
    if nics:
        files["network-config"] = network_config(nics)
    return files


def write_seed(path: Path, files: dict[str, str]) -> None:
    """Write the seed ISO holding `files` at `path`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for index, (name, text) in enumerate(sorted(files.items())):
            data = text.encode()
            # The plain ISO 9660 name is unused by cloud-init (it reads the Rock Ridge
            # or Joliet one) but must be unique and 8.3.
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/SEED{index}.;1",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        iso.write(str(path))
    finally:
        iso.close()
