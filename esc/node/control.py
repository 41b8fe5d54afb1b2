"""Starting, stopping and inspecting a node (what escadm start/stop/status do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from esc.config import NodeHome, Settings, api_base_url
from esc.node import processes
from esc.node.ports import PortInUse, check_port_free
from esc.node.processes import (
    SUPERVISOR,
    GivenUp,
    ProcessRecord,
    is_held,
    read_given_up,
    remove_given_up,
    service_names,
)
from esc.node.supervisor import START_SIGNAL, STOP_TIMEOUT
from esc.tls import TlsError, certificate_problem, client_verify, server_files, trusted_ca


class ControlError(Exception):
    """start/stop could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceState:
    name: str
    record: ProcessRecord | None  # None: not running
    given_up: GivenUp | None = None  # the running supervisor stopped restarting it
    held: bool = False  # stopped on request (escadm keepalived stop) and kept stopped

    @property
    def running(self) -> bool:
        return self.record is not None


@dataclass(frozen=True)
class NodeState:
    supervisor: ProcessRecord | None
    services: list[ServiceState]
    api_ready: bool
    api_problem: str | None = None  # why the API's certificate is not trusted
    api_status: int | None = None  # the HTTP status of GET /esc/health; None: no answer
    api_checks: list[dict] | None = None  # the controller's own checks, when it answered

    @property
    def running(self) -> bool:
        """Supervised (escadm start), or a service run in the foreground (escadm run)."""
        return self.supervisor is not None or any(s.running for s in self.services)

    @property
    def healthy(self) -> bool:
        return self.running and self.api_ready and all(s.running for s in self.services)

    @property
    def given_up(self) -> list[GivenUp]:
        return [s.given_up for s in self.services if s.given_up]


def live_record(home: NodeHome, name: str) -> ProcessRecord | None:
    return processes.live_record(home.run, name)


def api_ready(
    home: NodeHome, settings: Settings, timeout: float = 0.5, ca: Path | None = None
) -> bool:
    """Does the API answer, over HTTPS verified against `ca` (else the node's own
    certificate) when the node has TLS?"""
    return _probe(home, settings, timeout, ca) == (True, None)


def _probe(
    home: NodeHome, settings: Settings, timeout: float, ca: Path | None
) -> tuple[bool, str | None]:
    """(healthy, why its certificate is refused when it is)."""
    status, problem, _checks = _health(home, settings, timeout, ca)
    return status == 200, problem


def api_answers(home: NodeHome, settings: Settings, timeout: float) -> bool:
    """Does the API answer GET /esc/health at all (whatever its verdict)?"""
    return _health(home, settings, timeout, None)[0] is not None


def _health(
    home: NodeHome, settings: Settings, timeout: float, ca: Path | None
) -> tuple[int | None, str | None, list[dict] | None]:
    """GET /esc/health: (HTTP status or None, why its certificate is refused, checks)."""
    url = api_base_url(settings)
    try:
        verify = client_verify(home, settings, ca)
        response = httpx.get(f"{url}/esc/health", timeout=timeout, verify=verify)
    except TlsError as exc:
        return None, str(exc), None
    except httpx.HTTPError as exc:
        return None, certificate_problem(exc, url, trusted_ca(home, settings, ca)), None
    try:
        checks = response.json().get("checks")
    except (ValueError, AttributeError):
        checks = None
    return response.status_code, None, checks if isinstance(checks, list) else None


def node_state(home: NodeHome, settings: Settings, ca: Path | None = None) -> NodeState:
    supervisor = live_record(home, SUPERVISOR)
    services = [
        ServiceState(
            name,
            record := live_record(home, name),
            # A record left by a supervisor that is gone says nothing about today.
            read_given_up(home.run, name) if supervisor and not record else None,
            bool(supervisor) and not record and is_held(home.run, name),
        )
        for name in service_names(settings.ha.enabled)
    ]
    running = supervisor is not None or any(s.running for s in services)
    if not running:
        return NodeState(supervisor, services, False)
    status, problem, checks = _health(home, settings, 0.5 if not settings.ha.enabled else 2.0, ca)
    return NodeState(supervisor, services, status == 200, problem, status, checks)


def runs_here(home: NodeHome) -> bool:
    """Whether a node runs in this home, under its supervisor or in the foreground: an
    API that refuses connections then may be back in a moment (a restart)."""
    return bool(live_record(home, SUPERVISOR) or live_record(home, "escmanager"))


def not_answering_hint(home: NodeHome) -> str:
    """What to do when the API does not answer, for the way this node runs (or not)."""
    if live_record(home, SUPERVISOR):
        return "the node runs under its supervisor (escadm start): 'escadm status' says why"
    foreground = live_record(home, "escmanager")
    if foreground:
        return (
            f"the node runs in the foreground (escadm run, pid {foreground.pid}): "
            f"see {home.log / 'escmanager.log'}"
        )
    return (
        f"no ESC node runs in {home.root}: start it with 'escadm start' (in the background) "
        "or 'escadm run' (in the foreground), or check --home"
    )


def start_node(home: NodeHome, settings: Settings, timeout: float = 60.0) -> str:
    """Start what is not running and wait until the API answers; say what was done.

    Not running: the supervisor is started detached. Supervised but a service
    stopped (given up after dying too often, or waiting to be restarted): the
    supervisor is asked to start it now. Everything running: nothing is done."""
    supervisor_record = live_record(home, SUPERVISOR)
    if supervisor_record:
        return _start_stopped_services(home, settings, supervisor_record, timeout)
    names = service_names(settings.ha.enabled)
    foreground = [name for name in names if live_record(home, name)]
    if foreground:
        return (
            f"ESC is already running in the foreground ({', '.join(foreground)}: escadm run); "
            "nothing started"
        )
    server_files(home, settings)  # TlsError: refused here rather than by a crash-looping service
    try:
        check_port_free(settings.api.host, settings.api.port)
    except (PortInUse, OSError) as exc:
        raise ControlError(str(exc)) from None
    home.log.mkdir(mode=0o700, exist_ok=True)
    home.run.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        remove_given_up(home.run, name)
    supervisor = subprocess.Popen(
        # -P and the home as working directory: `-m` would otherwise import an `esc` from
        # wherever escadm was typed (a source checkout of another release, say).
        [sys.executable, "-P", "-m", "esc.node.supervisor", "--home", str(home.root)],
        cwd=home.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise ControlError(
                f"the supervisor exited with code {supervisor.returncode}; "
                f"see {home.log / 'supervisor.log'}"
            )
        ready, refused = _started(home, settings)
        if ready:
            return "ESC started"
        if refused:  # waiting longer would not help
            raise ControlError(f"ESC started, but its API cannot be trusted: {refused}")
        time.sleep(0.1)
    raise ControlError(
        f"ESC did not become ready within {timeout:g} s; see "
        f"{home.log / 'escmanager.log'} (it keeps trying; escadm stop to give up)"
    )


def _started(home: NodeHome, settings: Settings) -> tuple[bool, str | None]:
    """Has the node started: (yes, why the API cannot be trusted). A standalone node
    once its API is healthy. An HA node once every service runs and the API answers at
    all: a standby's API answers 503 by design (it does not hold the active role), and
    the standby's database may still be being cloned from its peer."""
    if not settings.ha.enabled:
        return _probe(home, settings, 0.5, None)
    if not all(live_record(home, name) for name in service_names(True)):
        return False, None
    status, problem, _checks = _health(home, settings, 0.5, None)
    return status is not None, problem


def _start_stopped_services(
    home: NodeHome, settings: Settings, supervisor: ProcessRecord, timeout: float
) -> str:
    names = service_names(settings.ha.enabled)
    stopped = [name for name in names if not live_record(home, name)]
    if not stopped:
        return "ESC is already running"
    given_up = {name: read_given_up(home.run, name) for name in stopped}
    os.kill(supervisor.pid, START_SIGNAL)
    deadline = time.monotonic() + timeout
    # The supervisor removes a given-up record when it starts the service again.
    while any(read_given_up(home.run, name) for name, g in given_up.items() if g):
        if time.monotonic() > deadline or not supervisor.alive():
            raise ControlError(
                f"the supervisor (pid {supervisor.pid}) did not start {', '.join(stopped)}; "
                f"see {home.log / 'supervisor.log'}"
            )
        time.sleep(0.1)
    while time.monotonic() < deadline:
        again = [g for name in stopped if (g := read_given_up(home.run, name))]
        if again:
            raise ControlError("started again, but " + "; ".join(g.describe() for g in again))
        if all(live_record(home, name) for name in names) and _started(home, settings)[0]:
            done = [
                f"{name} (it had been given up: {g.reason})" if g else name
                for name, g in given_up.items()
            ]
            return f"ESC was running with {', '.join(stopped)} stopped; started {', '.join(done)}"
        time.sleep(0.1)
    raise ControlError(
        f"{', '.join(stopped)} did not become ready within {timeout:g} s; see "
        f"{home.log / 'supervisor.log'} (the supervisor keeps trying; escadm stop to give up)"
    )


def stop_node(home: NodeHome, timeout: float = STOP_TIMEOUT + 30) -> bool:
    """Stop the node gracefully. Returns False when it was not running."""
    record = live_record(home, SUPERVISOR)
    if record is None:
        return False
    os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record.alive():
            return True
        time.sleep(0.1)
    raise ControlError(
        f"the supervisor (pid {record.pid}) did not stop within {timeout:g} s; "
        f"see {home.log / 'supervisor.log'}"
    )


# `escadm status` exit codes (LSB init-script convention for "not running"); a
# service given up by the supervisor makes the node unhealthy.
STATUS_HEALTHY = 0
STATUS_UNHEALTHY = 1
STATUS_STOPPED = 3


def status_lines(state: NodeState, *, verbose: bool = False) -> tuple[list[str], int]:
    """What `escadm status [--v]` prints, in ESC's words, and its exit code."""
    lines = []
    for service in state.services:
        if service.given_up:  # said even without --v: it is why the node is unhealthy
            lines.append(service.given_up.describe())
        elif verbose and service.record:
            lines.append(f"{service.name} (pgid {service.record.pgid}) is running")
        elif service.held and service.name == "keepalived":
            lines.append("keepalived is stopped on request (escadm keepalived start)")
        elif verbose:
            lines.append(f"{service.name} is stopped")
    if not state.running:
        return [*lines, "ESC status=0 ESC is stopped"], STATUS_STOPPED
    if state.healthy:
        return [*lines, "ESC status=0 ESC Standalone Healthy"], STATUS_HEALTHY
    if state.api_problem:
        lines.append(f"api: {state.api_problem}")
    return [*lines, "ESC status=1 ESC Standalone Unhealthy"], STATUS_UNHEALTHY
