"""Whether a VM is up: the one liveness check, for the deploy and for MONA.

VIM drivers report VIM state only (BUILDING, RUNNING, STOPPED, ERROR, ABSENT):
what the application in a VM shows is asked of the VM itself, here, and its
address says how:

- `http://HOST:PORT`: the VM runs ESC's own VNF program (the local VIM's and a
  VIM host's VMs). It is up when its health endpoint, GET /health, answers 200
  naming the VM's own id: another process that took the port after the VM died
  is not the VM. A VNF still booting, or whose application went bad, answers 503.
- an IP address, or none yet: a real VIM's VM (OpenStack, libvirt, VMware, CSP)
  runs the operator's image, which serves nothing of ESC's. A deploy waits for
  what every such VM shows, the VIM's RUNNING; whether it answers on its network
  is then MONA's ICMPPing KPI (an echo to the address, esc.monitor.icmp), where
  the descriptor asks for one: not every image answers ping before it is
  configured, nor does every controller have a route to a tenant network.

`vm_is_up` is what a deploy, start, reboot or recovery waits for (bounded by the
vm_group's bootup_time or recovery_wait_time); `LivenessProbe` is what MONA's VM
watcher polls, at its own rate, over a connection it keeps open.
"""

from __future__ import annotations

import asyncio
from typing import Any

from esc.monitor.icmp import IcmpProbe
from esc.monitor.probe import HttpProbe, ProbeError
from esc.vim.base import InstanceState, InstanceStatus

HEALTH_PATH = "/health"
# How long a deploy waits for one answer of a VM's health endpoint; it asks again, with
# backoff, until the vm_group's bootup_time has passed.
DEPLOY_PROBE_TIMEOUT = 1.0


def answers_http(address: str | None) -> bool:
    """The VM serves ESC's own health and metrics endpoints (its address is http://)."""
    return bool(address) and address.startswith("http://")


def is_own_health(status: int, body: Any, vm_id: str) -> bool:
    """A health endpoint's answer says the VM `vm_id` is up: 200, and its own id in it."""
    return status == 200 and isinstance(body, dict) and body.get("vm_id") == vm_id


class LivenessProbe:
    """Polls one VM as its address says: its health endpoint, or an ICMP echo."""

    def __init__(self, vm_id: str, address: str) -> None:
        self.vm_id = vm_id
        self.via: HttpProbe | IcmpProbe = (
            HttpProbe(address) if answers_http(address) else IcmpProbe(address)
        )

    async def answers(self, timeout: float) -> bool:
        """Whether the VM answers as itself (False: it answered, not as up and itself).
        Raises ProbeError, ProbeTimeout when nothing answered in time."""
        if isinstance(self.via, IcmpProbe):
            await self.via.ping(timeout)
            return True
        status, body = await self.via.get_json(HEALTH_PATH, timeout)
        return is_own_health(status, body, self.vm_id)

    def close(self) -> None:
        self.via.close()


async def _answers_once(vm_id: str, address: str, timeout: float) -> bool:
    probe = LivenessProbe(vm_id, address)
    try:
        return await probe.answers(timeout)
    except ProbeError:
        return False
    finally:
        probe.close()


def vm_is_up(status: InstanceStatus, timeout: float = DEPLOY_PROBE_TIMEOUT) -> bool:
    """What a deploy waits for: the VIM reports the VM RUNNING and, when its address is
    http://, its health endpoint answers naming it. Blocking: the engine's steps run in
    threads of their own, so each check runs in an event loop of its own."""
    if status.state is not InstanceState.RUNNING:
        return False
    if status.address is None or not answers_http(status.address):
        return True
    return asyncio.run(_answers_once(status.vm_id, status.address, timeout))
