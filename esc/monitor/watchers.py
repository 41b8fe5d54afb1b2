"""Watchers: one asyncio task per KPI being polled.

A VM watcher polls one VM for a success/failure metric (ICMPPing: the
liveness check of esc.monitor.liveness, the VM's health endpoint where its
address is http://, which also fails when its process is gone, else an ICMP
echo to its address). A group watcher polls every ALIVE VM of a vm_group
for a threshold metric and judges their average, so scaling follows the
group's load, not one VM's. Polls run at a fixed rate (`poll_frequency`)
from a random phase, so thousands of watchers spread over the period
instead of polling at once.
"""

from __future__ import annotations

import abc
import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esc.monitor.kpis import KpiState, threshold_holds
from esc.monitor.liveness import LivenessProbe, answers_http
from esc.monitor.probe import HttpProbe, ProbeError, ProbeTimeout
from esc.monitor.targets import GroupTarget, VmTarget

# A poll that has had no answer by then counts as failed (and never overlaps the next).
MAX_PROBE_TIMEOUT_SHARE = 0.9
HEARTBEAT = 0.1


class LoopLag:
    """How late this event loop runs what is due: measured by a heartbeat.

    When MONA itself falls behind (more VMs than it can poll), answers sit
    unread and polls time out although the VMs are fine; such a timeout must
    not count as a dead VM, or an overloaded monitor would "recover" healthy
    VMs. The figure decays within about a second once the loop keeps up.
    """

    def __init__(self) -> None:
        self.late = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(HEARTBEAT)
            lag = loop.time() - before - HEARTBEAT
            self.late = max(lag, self.late * 0.8)


@dataclass(frozen=True)
class Observation:
    holds: bool
    value: float | None


OnChange = Callable[["Watcher", bool, float | None], None]


class Watcher(abc.ABC):
    """Polls, counts and reports KPI state changes to `on_change`."""

    vm: VmTarget | None = None  # the VM watched, for a VM watcher

    def __init__(
        self,
        group: GroupTarget,
        kpi: dict[str, Any],
        signature: tuple[Any, ...],
        probe_timeout: float,
        on_change: OnChange,
        lag: LoopLag,
    ) -> None:
        self.group = group
        self.kpi = kpi
        self.signature = signature  # what it watches: a change replaces the watcher
        self.lag = lag
        self.period = float(kpi["metric_collector"]["poll_frequency"])
        self.timeout = min(probe_timeout, self.period * MAX_PROBE_TIMEOUT_SHARE)
        self.state = KpiState(kpi["metric_occurrences_true"], kpi["metric_occurrences_false"])
        self.on_change = on_change
        self.polls = 0
        self.first_change = True
        self.task: asyncio.Task[None] | None = None

    @property
    def event_name(self) -> str:
        return self.kpi["event_name"]

    @abc.abstractmethod
    async def observe(self) -> Observation | None:
        """One poll; None when it tells nothing (no VM answered a metrics poll)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close its connections."""

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, self.period)
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            observation = await self.observe()
            self.polls += 1
            if observation is not None:
                self.first_change = self.state.fired is None
                changed = self.state.observe(observation.holds)
                if changed is not None:
                    self.on_change(self, changed, observation.value)
            # Fixed rate; after a stall (a slow poll, a busy loop) skip the missed ticks.
            next_at = max(next_at + self.period, loop.time())


class VmWatcher(Watcher):
    def __init__(self, group: GroupTarget, kpi: dict[str, Any], vm: VmTarget, **kw: Any) -> None:
        self.vm = vm
        self.probe = LivenessProbe(vm.id, vm.address or "")
        super().__init__(group, kpi, **kw)

    async def observe(self) -> Observation | None:
        try:
            alive = await self.probe.answers(self.timeout)
        except ProbeTimeout:
            if self.lag.late > self.timeout / 2:
                return None  # MONA was late, not the VM: this poll tells nothing
            return Observation(False, 0.0)
        except ProbeError:
            return Observation(False, 0.0)
        return Observation(alive, 1.0 if alive else 0.0)

    def close(self) -> None:
        self.probe.close()


class GroupWatcher(Watcher):
    def __init__(self, group: GroupTarget, kpi: dict[str, Any], field: str, **kw: Any) -> None:
        # Metrics come from ESC's metrics endpoint, which only the local VIM's VMs serve.
        self.members = [vm for vm in group.alive_vms() if answers_http(vm.address)]
        self.probes = [HttpProbe(vm.address or "") for vm in self.members]
        self.field = field
        super().__init__(group, kpi, **kw)

    async def _value(self, vm: VmTarget, probe: HttpProbe) -> float | None:
        try:
            status, body = await probe.get_json("/metrics", self.timeout)
        except ProbeError:
            return None
        if status != 200 or not isinstance(body, dict) or body.get("vm_id") != vm.id:
            return None
        value = body.get(self.field)
        return float(value) if isinstance(value, int | float) else None

    async def observe(self) -> Observation | None:
        values = await asyncio.gather(
            *(self._value(vm, probe) for vm, probe in zip(self.members, self.probes, strict=True))
        )
        answered = [v for v in values if v is not None]
        if not answered:
            return None
        average = sum(answered) / len(answered)
        return Observation(threshold_holds(self.kpi, average), average)

    def close(self) -> None:
        for probe in self.probes:
            probe.close()
