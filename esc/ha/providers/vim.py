"""The node provider of a VIM: ESC's own nodes as VMs of any VIM driver.

One provider for every VIM (OpenStack, libvirt, VMware, CSP): a node is a VM the
driver makes, whose VM id is the node's name, tagged with the controller id
`esc-nodes` (NODE_CONTROLLER) instead of a controller's: a controller's
list_instances never lists a node VM, so a controller on the same VIM never takes
its own nodes for orphans (nor stops one), and the node provider never sees a VNF.

- deploy: one VM (image, flavor, one NIC on `network` with the node's fixed IP and
  floating IP) whose day-0 is the node's escadm init parameters
  (esc.node.firstboot), delivered the VIM's way (cloud-init on libvirt and
  OpenStack, guestinfo on VMware); a VIM that puts the day-0 files as they are on a
  CD (VimDriver.day0_on_cd: CSP's day0 file) gets them as the NoCloud seed that
  cloud-init in the node's image reads: its user-data writes them into the image's
  day-0 directory, its network-config gives the NIC the node's address. What was
  asked is recorded in the VM's own metadata on the VIM (VimDriver.set_vm_metadata),
  so any host with the VIM's credentials shows it, and a redeploy with other
  parameters is told apart; where the driver keeps no metadata nothing tells them
  apart, so an existing node is not deployed over.
- power-off with a grace: the VIM's graceful stop, then as fence; fence: the VIM's
  hard power-off (VimDriver.power_off), returning only once the VIM reports the VM
  stopped; fencing a stopped node powers nothing and succeeds.
- a node is named by its name or by its address (as the pair's nodes name each
  other): the address is found in each node VM's recorded parameters, else among the
  addresses the VIM reports of the running ones.
- the witness record: an `outdated` entry in the node VM's metadata, on the VIM, where
  both nodes of the pair read it with the VIM's credentials. It lives with the VM: a
  node deleted and deployed again starts without data (it is cloned from its peer),
  so it needs no mark. A driver that keeps no metadata cannot keep it: its provider
  says so and names what to use instead.

The VIM's errors keep their kind: a transient one (unreachable, a timeout, 5xx) is a
TransientProviderError, any other refusal a PermanentProviderError, in the VIM's
words. Calls are bounded by the driver's own timeouts ([vim.NAME]).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esc.config import ConfigError, HaSettings, NodeHome, VimSettings
from esc.ha.provider import (
    NodeProvider,
    NodeSpec,
    NodeStatus,
    PermanentProviderError,
    TransientProviderError,
    UnknownNode,
    is_address,
)
from esc.node.firstboot import DEFAULT_DAY0_DIR
from esc.vim.base import (
    InstanceState,
    Interface,
    MetadataUnsupported,
    TransientVimError,
    VimDriver,
    VimError,
    VmSpec,
    load_driver,
)
from esc.vim.nocloud import SeedNic, seed_files

# The controller id every node VM is tagged with: never a controller's (those are ids
# made by the controller's database), so no controller lists a node VM.
NODE_CONTROLLER = "esc-nodes"
NODE_KEY = "node"  # the node's parameters (NodeSpec.parameters), JSON
OUTDATED_KEY = "outdated"  # the witness record: {"reason", "since"}, JSON
# Where a node provider's driver keeps its own files (libvirt's overlays, seeds), apart
# from the controller's VMs'.
NODES_DIR = "nodes"


def _plain_ip(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip) if address else ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def cd_seed(spec: NodeSpec, day0: dict[str, str]) -> dict[str, str]:
    """The node's day-0 files as a NoCloud seed, for a VIM that puts day-0 files on a CD
    as they are: cloud-init in the node's image writes them into the directory its
    first boot reads (esc-node.service's --day0-dir) and gives its one NIC the node's
    address and default route (DHCP without an address)."""
    nics = []
    if spec.ip:
        nics = [SeedNic("", ipaddress.ip_interface(spec.ip), spec.gateway_ip or None)]
    return seed_files(spec.name, spec.name, day0, str(DEFAULT_DAY0_DIR), nics)


def node_driver(
    driver: str, settings: VimSettings, home: Path, data_dir: Path | None = None
) -> VimDriver:
    """The VIM driver `driver` as `settings` configure it, for node VMs."""
    try:
        return load_driver(
            driver, data_dir or home / "data" / NODES_DIR, settings, home, NODE_CONTROLLER
        )
    except ConfigError as exc:  # a secret its settings name cannot be read
        raise PermanentProviderError(f"the {driver} VIM: {exc}") from None
    except VimError as exc:
        raise PermanentProviderError(str(exc)) from None


class VimNodeProvider(NodeProvider):
    name = "vim"

    def __init__(self, driver: VimDriver, where: str = "") -> None:
        driver.controller_id = NODE_CONTROLLER
        self.driver = driver
        self.where = where or f"the {driver.name} VIM"

    @classmethod
    def from_settings(cls, ha: HaSettings, home: Path) -> VimNodeProvider:
        """[ha] provider names the VIM driver; the node's esc.toml [vim.NAME] section
        configures it (the VIM the pair's node VMs are on)."""
        node = NodeHome(home)
        try:
            settings = node.load()
        except ConfigError as exc:
            raise PermanentProviderError(
                f"the {ha.provider} node provider reads [vim.{ha.provider}] of esc.toml: {exc}"
            ) from None
        driver = node_driver(ha.provider, settings.vim, node.root)
        return cls(driver, f"the {ha.provider} VIM of {node.config_file}")

    def close(self) -> None:
        close = getattr(self.driver, "close", None)
        if close is not None:
            close()

    # the VIM's errors -------------------------------------------------------------------

    @contextlib.contextmanager
    def _vim(self, what: str) -> Iterator[None]:
        try:
            yield
        except TransientVimError as exc:
            raise TransientProviderError(f"{self.where} could not {what}: {exc}") from None
        except VimError as exc:
            raise PermanentProviderError(f"{self.where} could not {what}: {exc}") from None

    # the node VMs -----------------------------------------------------------------------

    def _recorded(self, name: str) -> dict[str, Any] | None:
        """The parameters recorded on the node VM; None where the driver keeps none."""
        try:
            text = self.driver.vm_metadata(name).get(NODE_KEY)
        except MetadataUnsupported:
            return None
        try:
            recorded = json.loads(text) if text else None
        except ValueError:
            return None
        return recorded if isinstance(recorded, dict) else None

    def _require(self, name: str) -> str:
        """The VM id of the node named `name` (it exists)."""
        with self._vim(f"look up node {name}"):
            if name in self.driver.list_instances():
                return name
        raise UnknownNode(f"no node {name} on {self.where} (escadm node list shows its nodes)")

    def _addresses(self, name: str) -> set[str]:
        recorded = self._recorded(name) or {}
        found = {_plain_ip(recorded.get("ip", "")), recorded.get("floating_ip", "")}
        status = self.driver.status(name)
        found |= set(status.ips)
        if status.address:
            found.add(status.address)
        return found - {""}

    def _by_address(self, address: str) -> str:
        wanted = str(ipaddress.ip_address(address))
        with self._vim(f"find the node of address {address}"):
            names = self.driver.list_instances()
            found = [name for name in names if wanted in self._addresses(name)]
        if len(found) > 1:
            raise PermanentProviderError(
                f"nodes {', '.join(found)} on {self.where} all have address {address}: name "
                "the node instead"
            )
        if found:
            return found[0]
        known = ", ".join(names) or "none"
        hint = ""
        if not self._keeps_metadata():
            hint = (
                f"; the {self.driver.name} driver keeps no metadata, so a stopped node's "
                "address is known only where the VIM reports it: name the node instead"
            )
        raise UnknownNode(
            f"no node on {self.where} has address {address} (its nodes: {known}){hint}"
        )

    def _resolve(self, node: str) -> str:
        return self._by_address(node) if is_address(node) else self._require(node)

    def _status(self, name: str) -> NodeStatus:
        with self._vim(f"show node {name}"):
            status = self.driver.status(name)
            if status.state is InstanceState.ABSENT:
                raise UnknownNode(f"no node {name} on {self.where}")
            recorded = self._recorded(name) or {}
        ip = _plain_ip(recorded.get("ip", "")) or (status.ips[0] if status.ips else None)
        floating = recorded.get("floating_ip") or None
        return NodeStatus(
            name=name,
            state=status.state,
            ip=ip or None,
            floating_ip=floating,
            image=recorded.get("image", ""),
            detail=status.detail,
            parameters=recorded,
        )

    # a node's life ----------------------------------------------------------------------

    def deploy(self, spec: NodeSpec) -> NodeStatus:
        day0 = spec.day0_config()
        wanted = spec.parameters()
        if (spec.ip or spec.floating_ip) and not spec.network:
            raise PermanentProviderError(
                f"node {spec.name}: give the network its NIC is on, the VIM's name for it "
                "(--network)"
            )
        if self.driver.day0_on_cd:
            if spec.ip and "/" not in spec.ip:
                raise PermanentProviderError(
                    f"node {spec.name}: give --ip with the network's prefix ({spec.ip}/24, "
                    f"say): on {self.where} the node's day-0 sets up its NIC, which needs it"
                )
            day0 = cd_seed(spec, day0)
        with self._vim(f"deploy node {spec.name}"):
            exists = spec.name in self.driver.list_instances()
            recorded = self._recorded(spec.name) if exists else None
        if exists and not self._keeps_metadata():
            raise PermanentProviderError(
                f"node {spec.name} exists already on {self.where}, whose {self.driver.name} "
                "driver keeps no record of what a node was deployed with, so whether it is "
                f"alike cannot be told: escadm node delete {spec.name} first to deploy it "
                "again"
            )
        if recorded is not None and recorded != wanted:
            changed = sorted(k for k in wanted if recorded.get(k) != wanted[k])
            raise PermanentProviderError(
                f"node {spec.name} exists already on {self.where} with another "
                f"{', '.join(changed)}: escadm node delete {spec.name} first to deploy it again"
            )
        interfaces = ()
        if spec.network:
            interfaces = (Interface(spec.network, spec.ip or None, spec.floating_ip or None),)
        vm = VmSpec(spec.name, spec.name, spec.image, spec.flavor, day0, interfaces)
        with self._vim(f"deploy node {spec.name}"):
            self.driver.create_vm(vm)
            if recorded is None:
                # Also when an earlier attempt made the VM and failed before this.
                with contextlib.suppress(MetadataUnsupported):
                    self.driver.set_vm_metadata(spec.name, {NODE_KEY: json.dumps(wanted)})
        return self._status(spec.name)

    def delete(self, node: str) -> None:
        name = self._resolve(node)
        with self._vim(f"delete node {name}"):
            self.driver.delete_vm(name)

    def show(self, node: str) -> NodeStatus:
        return self._status(self._resolve(node))

    def nodes(self) -> list[NodeStatus]:
        with self._vim("list the nodes"):
            names = self.driver.list_instances()
        shown = []
        for name in names:
            with contextlib.suppress(UnknownNode):  # deleted meanwhile
                shown.append(self._status(name))
        return shown

    def power_on(self, node: str) -> None:
        name = self._resolve(node)
        with self._vim(f"power node {name} on"):
            status = self.driver.start_vm(name)
        if status.state is not InstanceState.RUNNING:
            raise TransientProviderError(
                f"{self.where} reports node {name} {status.state.value} after its start"
                + (f": {status.detail}" if status.detail else "")
            )

    def power_off(self, node: str, grace: float = 0.0) -> None:
        name = self._resolve(node)
        if grace > 0:
            # The VIM's own graceful stop, bounded by its driver's shutdown timeout.
            with self._vim(f"stop node {name}"):
                self.driver.stop_vm(name)
        self._power_off(name)

    def fence(self, address: str) -> None:
        self._power_off(self._resolve(address))

    def _power_off(self, name: str) -> None:
        with self._vim(f"power node {name} off"):
            status = self.driver.power_off(name)
        if status.state is not InstanceState.STOPPED:
            raise TransientProviderError(
                f"{self.where} reports node {name} {status.state.value} after its power-off"
                + (f" ({status.detail})" if status.detail else "")
                + ": it is not certainly off; fence it again"
            )

    # the witness record -----------------------------------------------------------------

    def _keeps_metadata(self) -> bool:
        return type(self.driver).vm_metadata is not VimDriver.vm_metadata

    def _no_witness(self) -> PermanentProviderError:
        return PermanentProviderError(
            f"the {self.driver.name} VIM driver keeps no metadata on its VMs, so the pair's "
            f"witness record (which node is outdated) cannot be kept on {self.where}: set "
            "[ha] provider to one that keeps it (the VIM of a driver that keeps VM metadata, "
            "libvirt, openstack or vmware; or lab, the lab's host agent), or keep it and the nodes "
            "still fence each other through this VIM, but a standby never takes over by "
            "itself (an operator runs escadm ha force-active --discard-unreplicated on it)"
        )

    def _set_mark(self, address: str, mark: str | None, what: str) -> None:
        if not self._keeps_metadata():
            raise self._no_witness()
        name = self._by_address(address)
        with self._vim(f"{what} of node {name}"):
            self.driver.set_vm_metadata(name, {OUTDATED_KEY: mark})

    def mark_outdated(self, address: str, reason: str) -> None:
        mark = json.dumps({"reason": reason, "since": _now()})
        self._set_mark(address, mark, "write the outdated mark")

    def clear_outdated(self, address: str) -> None:
        self._set_mark(address, None, "clear the outdated mark")

    def outdated(self, address: str) -> str | None:
        if not self._keeps_metadata():
            raise self._no_witness()
        name = self._by_address(address)
        with self._vim(f"read the outdated mark of node {name}"):
            text = self.driver.vm_metadata(name).get(OUTDATED_KEY)
        if not text:
            return None
        try:
            return str(json.loads(text)["reason"])
        except (ValueError, KeyError, TypeError):
            return text  # written by hand: its text is the reason

    def check(self) -> None:
        with self._vim("be reached"):
            self.driver.check()
