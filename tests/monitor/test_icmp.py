"""The ICMPPing collector of a real VIM's VM: an echo to its address."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest
from conftest import need

from esc.db.models import VmState
from esc.monitor.icmp import IcmpProbe
from esc.monitor.probe import HttpProbe, ProbeError
from esc.monitor.targets import GroupTarget, VmTarget
from esc.monitor.watchers import LoopLag, Observation, VmWatcher

# A /24 of this test's own, routed nowhere: an echo to it fails here, on this machine.
UNROUTED = "198.18.74.0/24"


def test_a_loopback_address_answers() -> None:
    probe = IcmpProbe("127.0.0.1")
    try:
        assert 0 <= asyncio.run(probe.ping(2.0)) < 2.0
        assert asyncio.run(probe.ping(2.0)) >= 0  # the kept socket serves the next echo
    finally:
        probe.close()


def test_an_ipv6_loopback_answers() -> None:
    probe = IcmpProbe("::1")
    try:
        assert asyncio.run(probe.ping(2.0)) >= 0
    finally:
        probe.close()


@pytest.fixture
def unrouted() -> Iterator[str]:
    added = subprocess.run(["ip", "route", "add", "unreachable", UNROUTED], capture_output=True)
    if added.returncode != 0 and b"File exists" not in added.stderr:
        need(f"adding an unreachable route needs root: {added.stderr.decode().strip()}")
    try:
        yield "198.18.74.9"
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", UNROUTED], capture_output=True)


def test_an_address_that_cannot_be_reached_does_not_answer(unrouted: str) -> None:
    probe = IcmpProbe(unrouted)
    try:
        with pytest.raises(ProbeError, match=r"198\.18\.74\.9"):
            asyncio.run(probe.ping(0.5))
    finally:
        probe.close()


def test_what_is_not_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address to ping: 'http://x'"):
        IcmpProbe("http://x")


def _watch(address: str) -> VmWatcher:
    vm = VmTarget("vm-1", "vm-1", address, VmState.ALIVE, 0)
    kpi = {
        "event_name": "VM_ALIVE",
        "metric_collector": {"type": "ICMPPing", "poll_frequency": 1.0},
        "metric_occurrences_true": 1,
        "metric_occurrences_false": 1,
    }
    group = GroupTarget("g", "g", "t", "d", "d-1", (kpi,), (), 3, (vm,))
    return VmWatcher(
        group, kpi, vm, signature=(), probe_timeout=0.5, on_change=print, lag=LoopLag()
    )


def test_a_real_vims_vm_is_pinged_and_a_local_vms_health_asked(unrouted: str) -> None:
    pinged = _watch("127.0.0.1")
    assert isinstance(pinged.probe.via, IcmpProbe)
    assert asyncio.run(pinged.observe()) == Observation(True, 1.0)
    pinged.close()
    silent = _watch(unrouted)
    assert asyncio.run(silent.observe()) == Observation(False, 0.0)
    silent.close()
    assert isinstance(_watch("http://127.0.0.1:9").probe.via, HttpProbe)
