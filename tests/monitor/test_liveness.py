"""The one liveness check (esc.monitor.liveness): what a deploy waits for and what MONA's
VM watcher polls, against a real HTTP server standing in for a VM's health endpoint."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import free_port

from esc.monitor.icmp import IcmpProbe
from esc.monitor.liveness import LivenessProbe, vm_is_up
from esc.monitor.probe import HttpProbe, ProbeError, ProbeTimeout
from esc.vim.base import InstanceState, InstanceStatus


class HealthServer:
    """An HTTP server on 127.0.0.1 answering GET /health as a test sets `answer`:
    (status, body) with a JSON body, bytes as they are, or None to never answer."""

    def __init__(self) -> None:
        self.answer: tuple[int, object] | None = (200, {"status": "alive", "vm_id": "vm-1"})
        self.requests: list[str] = []
        self.connections = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                owner.connections += 1
                super().setup()

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if owner.answer is None:
                    time.sleep(2)
                    return
                status, body = owner.answer
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def health() -> Iterator[HealthServer]:
    server = HealthServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def running(address: str | None, vm_id: str = "vm-1") -> InstanceStatus:
    return InstanceStatus(vm_id, InstanceState.RUNNING, address)


# what a deploy waits for ---------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [InstanceState.BUILDING, InstanceState.STOPPED, InstanceState.ERROR, InstanceState.ABSENT],
)
def test_only_a_running_vm_is_up_and_nothing_else_is_asked(
    health: HealthServer, state: InstanceState
) -> None:
    assert not vm_is_up(InstanceStatus("vm-1", state, health.address))
    assert health.requests == []
    assert vm_is_up(running(health.address))
    assert health.requests == ["/health"]


@pytest.mark.parametrize("address", ["198.18.74.9", "2001:db8::7", None])
def test_a_real_vims_running_vm_is_up_by_the_vims_state_alone(address: str | None) -> None:
    """An IP address (or none yet) serves nothing of ESC's: the deploy sends it nothing,
    and MONA's ICMPPing watches it afterwards."""
    started = time.monotonic()
    assert vm_is_up(running(address))
    assert time.monotonic() - started < 0.5  # nothing waited for an answer
    assert not vm_is_up(InstanceStatus("vm-1", InstanceState.BUILDING, address))


def test_an_http_vm_is_up_when_its_health_endpoint_answers_naming_it(
    health: HealthServer,
) -> None:
    assert vm_is_up(running(health.address))
    # Another process that took the port (another VM's, or anything else) is not the VM.
    assert not vm_is_up(running(health.address, "vm-2"))
    health.answer = (200, {"status": "alive"})
    assert not vm_is_up(running(health.address))
    health.answer = (503, {"status": "unhealthy", "vm_id": "vm-1"})  # booting, or gone bad
    assert not vm_is_up(running(health.address))
    health.answer = (200, b"<html>a web server</html>")
    assert not vm_is_up(running(health.address))


def test_an_http_vm_that_does_not_answer_is_not_up_within_the_timeout(
    health: HealthServer,
) -> None:
    health.answer = None
    started = time.monotonic()
    assert not vm_is_up(running(health.address), timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert not vm_is_up(running(f"http://127.0.0.1:{free_port()}"))  # nothing listens


# what MONA polls -----------------------------------------------------------------------


def test_monas_probe_keeps_one_connection_and_tells_no_answer_apart(
    health: HealthServer,
) -> None:
    async def scenario() -> None:
        probe = LivenessProbe("vm-1", health.address)
        assert isinstance(probe.via, HttpProbe)
        try:
            assert [await probe.answers(2.0) for _ in range(3)] == [True] * 3
            health.answer = (503, {"status": "unhealthy", "vm_id": "vm-1"})
            assert await probe.answers(2.0) is False  # it answered, not as up
            health.answer = None
            with pytest.raises(ProbeTimeout):
                await probe.answers(0.3)
        finally:
            probe.close()
        refused = LivenessProbe("vm-1", f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ProbeError):
            await refused.answers(1.0)
        refused.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert health.requests == ["/health"] * 5
    assert health.connections == 1  # MONA polls thousands of VMs: no connection per poll


def test_monas_probe_of_an_ip_address_is_an_echo() -> None:
    probe = LivenessProbe("vm-1", "127.0.0.1")
    assert isinstance(probe.via, IcmpProbe)
    try:
        assert asyncio.run(probe.answers(2.0)) is True
    finally:
        probe.close()
