"""The node provider: the infrastructure that runs a node of the HA pair, which can
fence it and keeps the pair's witness record.

Fencing is STONITH: before a standby takes over from an active it cannot be sure is
gone, it has the provider make that node certainly unable to act (powered off, or
cut off from the network and its processes killed). Only the infrastructure under a
node can promise that; the two nodes cannot, since a node that does not answer may
still be writing.

The witness record is the one fact the pair cannot keep itself: which node's data
is outdated. An active that loses its standby marks it outdated at the provider
before it goes on committing without it (asynchronously), and clears the mark once
the standby has caught up. A standby marked outdated is never promoted automatically:
its copy lacks commits the active acknowledged.

A provider may also run the nodes' whole life, as a VIM runs a VM's (`escadm node`):
deploy a node from an image and the parameters of its `escadm init` (its day-0,
esc.node.firstboot), show it, power it off and on, delete it. An upgrade by image
deletes a node and deploys it again with the new image and the same name, address
and parameters.

As the VIM drivers are, a provider is one abstract class with one module per
provider (`esc.ha.providers.<name>`), the concrete class found by the name in
esc.toml ([ha] provider): `lab`, or the name of a VIM driver (`libvirt`, `vmware`,
...), whose generic provider (esc.ha.providers.vim) runs the nodes as VMs of that
VIM. Every call is idempotent (fencing a fenced node, clearing a clear mark) and
bounded by [ha] provider_timeout. Errors come in two kinds, so that the caller knows
whether asking again can help.
"""

from __future__ import annotations

import abc
import importlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from esc.node.firstboot import DAY0_FILE, PAIR_FILE, Day0Error, render_day0
from esc.vim.base import InstanceState

if TYPE_CHECKING:
    from esc.config import HaSettings, NodeHome

# The providers [ha] provider may name besides the VIM drivers', for the error that
# lists them.
PROVIDERS = ("lab",)
# The VIM drivers that cannot run a node: their VMs are processes of a controller's host.
NOT_NODE_VIMS = ("local", "vimhost")
# Connecting is quick on the pair's LAN, or the provider is not there: a failover must
# not wait the whole call timeout to learn that.
CONNECT_TIMEOUT = 1.0


class ProviderError(Exception):
    """The node provider refused or failed; the message names what and the fix.

    A plain ProviderError counts as permanent: an error not known to pass is not
    retried.
    """


class PermanentProviderError(ProviderError):
    """Asking again gets the same answer: a wrong token, an unknown node, a provider
    that cannot do what was asked. An operator must act."""


class TransientProviderError(ProviderError):
    """The provider could not answer now (unreachable, timed out, busy, a fence not yet
    complete): asking again may succeed."""


class NodeSpecError(PermanentProviderError):
    """A node's parameters cannot make a node (the message names which and why)."""


class UnknownNode(PermanentProviderError):
    """The provider has no such node."""


_NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]\Z")


@dataclass(frozen=True)
class NodeSpec:
    """An ESC node to deploy, in the terms of ESC's bootvm.py: its name (also its host
    name), the image and flavor it runs, the network its NIC is on, and the parameters
    of its `escadm init` (ip, gateway_ip, ha_node_list, kad_vip, kad_vif; any other init
    option in `init_options`). `ha_pair`: the pair file's text, for a node that joins
    its pair (as a redeployed node of a pair does). `vim_settings`: the node's own VIM,
    as [vim] of its esc.toml (bootvm.py's VIM connection parameters)."""

    name: str
    image: str
    flavor: str = ""
    network: str = ""
    ip: str = ""  # the node's address, with its prefix where the VIM needs one
    gateway_ip: str = ""
    ha_node_list: tuple[str, ...] = ()
    kad_vip: str = ""
    kad_vif: str = ""
    floating_ip: str = ""  # an existing floating IP the node keeps (OpenStack)
    init_options: tuple[tuple[str, str], ...] = ()
    vim_settings: tuple[tuple[str, Any], ...] = ()
    ha_pair: str = field(default="", repr=False)  # a secret: never shown nor recorded

    def day0_parameters(self) -> dict[str, Any]:
        return {
            "hostname": self.name,
            "ip": self.ip,
            "gateway_ip": self.gateway_ip,
            "ha_node_list": list(self.ha_node_list),
            "kad_vip": self.kad_vip,
            "kad_vif": self.kad_vif,
            "ha_pair_file": PAIR_FILE if self.ha_pair else "",
            "init": dict(self.init_options),
            "vim": dict(self.vim_settings),
        }

    def day0_config(self) -> dict[str, str]:
        """The node's day-0 files: its escadm init parameters, and the pair file."""
        self.check()
        files = {DAY0_FILE: render_day0(self.day0_parameters())}
        if self.ha_pair:
            files[PAIR_FILE] = self.ha_pair
        return files

    def check(self) -> None:
        """Raise NodeSpecError naming the first parameter that cannot make a node."""
        if not _NODE_NAME.match(self.name or ""):
            raise NodeSpecError(
                f"node name {self.name!r}: use 2 to 32 lowercase letters, digits and '-', "
                "starting with a letter (it is the node's host name too)"
            )
        if not self.image:
            raise NodeSpecError("give the node's image")
        if self.floating_ip:
            try:
                ipaddress.ip_address(self.floating_ip)
            except ValueError:
                raise NodeSpecError(f"floating IP {self.floating_ip!r} is no IP address") from None
        try:
            render_day0(self.day0_parameters())
        except Day0Error as exc:
            raise NodeSpecError(str(exc).replace("day-0 ", "", 1)) from None

    def parameters(self) -> dict[str, Any]:
        """What a provider records of the node, to show it and to deploy it again alike
        (everything but the pair file's secrets)."""
        return {
            "image": self.image,
            "flavor": self.flavor,
            "network": self.network,
            "ip": self.ip,
            "gateway_ip": self.gateway_ip,
            "ha_node_list": list(self.ha_node_list),
            "kad_vip": self.kad_vip,
            "kad_vif": self.kad_vif,
            "floating_ip": self.floating_ip,
            "init_options": dict(self.init_options),
            "vim_settings": dict(self.vim_settings),
            "joins_pair": bool(self.ha_pair),
        }


@dataclass(frozen=True)
class NodeStatus:
    """What a provider knows of a node now."""

    name: str
    state: InstanceState  # RUNNING, STOPPED (powered off or fenced), BUILDING, ERROR
    ip: str | None = None  # its address (without prefix)
    floating_ip: str | None = None
    image: str = ""
    detail: str = ""  # the provider's own words on the state (an ERROR's reason)
    parameters: dict[str, Any] = field(default_factory=dict)  # as NodeSpec.parameters

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "ip": self.ip,
            "floating_ip": self.floating_ip,
            "image": self.image,
            "detail": self.detail,
            "parameters": self.parameters,
        }


def is_address(node: str) -> bool:
    try:
        ipaddress.ip_address(node)
    except ValueError:
        return False
    return True


class NodeProvider(abc.ABC):
    """The infrastructure that runs the pair's nodes, each named by its address (fencing
    and the witness record, as a node of the pair asks) or by its name (as an operator
    deploys one); `node` arguments take either."""

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, ha: HaSettings, home: Path) -> Self:
        """The provider as [ha] configures it; relative paths are in the node home."""

    @abc.abstractmethod
    def fence(self, address: str) -> None:
        """Make the node at `address` certainly unable to act, and return only then.

        Powered off, or cut off from every network with nothing left running: a node
        that was fenced never sends or writes again until it is powered on. Fencing a
        fenced node is not an error. Raise ProviderError (naming what failed) when
        that cannot be promised, never return without it.
        """

    @abc.abstractmethod
    def mark_outdated(self, address: str, reason: str) -> None:
        """Record in the witness record that the node's data is outdated (and why)."""

    @abc.abstractmethod
    def clear_outdated(self, address: str) -> None:
        """Remove the node's outdated mark; a node without one is not an error."""

    @abc.abstractmethod
    def outdated(self, address: str) -> str | None:
        """The reason the node was marked outdated, or None when it is not."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ProviderError when the provider cannot be reached or used (endpoint,
        credentials), naming the setting to correct."""

    def power_on(self, node: str) -> None:
        """Start a fenced or powered-off node again, as after a reboot."""
        raise PermanentProviderError(
            f"the {self.name} node provider cannot power nodes on: start {node} by hand"
        )

    def power_off(self, node: str, grace: float = 0.0) -> None:
        """Shut the node down: `grace` seconds for its processes to stop, then as fence."""
        raise PermanentProviderError(
            f"the {self.name} node provider cannot power nodes off: stop {node} by hand"
        )

    def deploy(self, spec: NodeSpec) -> NodeStatus:
        """Make the node and start it; its first boot runs its escadm init from the
        day-0 (NodeSpec.day0_config). A node of that name with the same parameters is
        returned as it is; one with other parameters is refused (delete it first)."""
        raise PermanentProviderError(f"the {self.name} node provider cannot deploy nodes")

    def delete(self, node: str) -> None:
        """Power the node off and remove it with its disks (UnknownNode if there is none)."""
        raise PermanentProviderError(f"the {self.name} node provider cannot delete nodes")

    def show(self, node: str) -> NodeStatus:
        """The node as the provider knows it now (UnknownNode if there is none)."""
        raise PermanentProviderError(f"the {self.name} node provider cannot show nodes")

    def nodes(self) -> list[NodeStatus]:
        """Every node of this provider, by name."""
        raise PermanentProviderError(f"the {self.name} node provider cannot list nodes")

    def close(self) -> None:  # noqa: B027 - a provider without connections has nothing to close
        """Release the provider's connections."""


def load_provider(home: NodeHome | Path, ha: HaSettings) -> NodeProvider | None:
    """The node provider [ha] names, or None when [ha] provider is empty.

    `home` is the node home (a NodeHome or its root directory): a relative
    provider_token_file is there. Without a provider a standby never takes over from a
    peer it cannot confirm is gone.
    """
    name = ha.provider
    if not name:
        return None
    root = home if isinstance(home, Path) else home.root
    if name in node_vims():
        from esc.ha.providers.vim import VimNodeProvider

        return VimNodeProvider.from_settings(ha, root)
    if not name.isidentifier() or name == "vim":
        raise PermanentProviderError(
            f"node provider name {name!r} is not valid: set [ha] provider in esc.toml to one "
            f"of: {', '.join(provider_names())}, or leave it empty for none"
        )
    module_name = f"esc.ha.providers.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the provider exists but lacks a dependency: say that, not "unknown"
        raise PermanentProviderError(
            f"unknown node provider {name!r}: set [ha] provider in esc.toml to one of: "
            f"{', '.join(provider_names())}, or leave it empty for none"
        ) from exc
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, NodeProvider)
            and value is not NodeProvider
            and getattr(value, "name", None) == name
        ):
            return value.from_settings(ha, root)
    raise PermanentProviderError(f"module {module_name} defines no NodeProvider named {name!r}")


def node_vims() -> list[str]:
    """The installed VIM drivers that can run nodes, each a node provider of its name."""
    from esc.vim.base import installed_drivers

    return sorted(set(installed_drivers()) - set(NOT_NODE_VIMS))


def provider_names() -> list[str]:
    return [*PROVIDERS, *node_vims()]
