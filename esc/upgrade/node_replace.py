"""One node of a pair replaced by the same node made from another image: what an
upgrade by image does to each node, on whatever runs it (the node provider).

The node is deployed again with the parameters it was deployed with (its name, which
is its host name, its address, its floating IP, its network, its escadm init
parameters), the image alone changed, and it joins its pair with the pair file. Per
provider that is:

- the lab: the node's namespace and disk removed, then made from the other release;
- OpenStack: the server deleted and booted again from the new image with the same
  name, fixed IP (its port) and floating IP;
- libvirt: the domain destroyed and undefined with its storage, then defined from a
  copy of the new image;
- VMware: the VM powered off and deleted from disk, then deployed from the new image;
- CSP: the service powered off and deleted, then created from the new image.

The parameters are read from the provider before anything is removed and recorded by
the caller (an orchestrator cut short after the delete still has them), so replacing
is safe to run again: a node already made from the new image is left as it is. A
provider that records no parameters (a CSP) is given them by the caller, and cannot
tell a node made from the new image already: there it is replaced again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from esc.ha.provider import (
    NodeProvider,
    NodeSpec,
    NodeSpecError,
    NodeStatus,
    PermanentProviderError,
    UnknownNode,
)
from esc.vim.base import InstanceState

# Seconds a node being replaced has for an orderly shutdown (a standby's services
# stop in a few seconds) before it is powered off hard.
SHUTDOWN_GRACE = 60.0


def recorded_parameters(
    provider: NodeProvider, name: str, given: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters node `name` was deployed with, as its provider keeps them, else
    as `given` (the pair access file's, for a provider that keeps none)."""
    status = provider.show(name)
    if status.parameters.get("image"):
        return dict(status.parameters)
    if given and given.get("image"):
        return dict(given)
    raise PermanentProviderError(
        f"node {name} is known to its provider, which keeps no record of what it was "
        "deployed with: give them in the pair access file ([node.parameters], as escadm "
        "node deploy --json printed them), or upgrade the pair by package"
    )


def spec_for(name: str, parameters: dict[str, Any], image: str, ha_pair: str) -> NodeSpec:
    """The node of `parameters` made from `image`, joining its pair with `ha_pair`."""
    spec = NodeSpec(
        name=name,
        image=image,
        flavor=parameters.get("flavor", ""),
        network=parameters.get("network", ""),
        ip=parameters.get("ip", ""),
        gateway_ip=parameters.get("gateway_ip", ""),
        ha_node_list=tuple(parameters.get("ha_node_list") or ()),
        kad_vip=parameters.get("kad_vip", ""),
        kad_vif=parameters.get("kad_vif", ""),
        floating_ip=parameters.get("floating_ip", ""),
        init_options=tuple(sorted((parameters.get("init_options") or {}).items())),
        vim_settings=tuple(sorted((parameters.get("vim_settings") or {}).items())),
        ha_pair=ha_pair,
    )
    try:
        spec.check()
    except NodeSpecError as exc:
        raise NodeSpecError(f"node {name} cannot be deployed again as recorded: {exc}") from None
    return spec


def _current(provider: NodeProvider, name: str) -> NodeStatus | None:
    try:
        return provider.show(name)
    except UnknownNode:
        return None


def replace_node(
    provider: NodeProvider,
    name: str,
    parameters: dict[str, Any],
    image: str,
    ha_pair: str,
    progress: Callable[[str], None] = lambda _line: None,
) -> NodeStatus:
    """Node `name` made from `image` with its recorded `parameters`: shut down, deleted
    with its disks, deployed again. A node already made from `image` is returned as
    it is (a replacement cut short is continued by calling this again)."""
    spec = spec_for(name, parameters, image, ha_pair)
    status = _current(provider, name)
    if status is not None and status.parameters.get("image") == image:
        if status.state is InstanceState.STOPPED:
            progress(f"node {name} is made from {image} already: powering it on")
            provider.power_on(name)
            return provider.show(name)
        if status.state is not InstanceState.ERROR:
            progress(f"node {name} is made from {image} already")
            return provider.deploy(spec)  # waits out a deploy in progress
    if status is not None:
        if status.state is InstanceState.RUNNING:
            progress(f"node {name}: orderly shutdown (up to {SHUTDOWN_GRACE:g} s)")
            provider.power_off(name, grace=SHUTDOWN_GRACE)
        progress(f"node {name}: deleting it with its disks")
        provider.delete(name)
    progress(f"node {name}: deploying it from {image}")
    return provider.deploy(spec)
