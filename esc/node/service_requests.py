"""Asking the running supervisor to restart, stop or start one of the node's services.

    request_restart(home, "pgsql")      # a planned restart: not counted as a death
    request_stop(home, "keepalived")    # stopped, and kept stopped ...
    request_start(home, "keepalived")   # ... until started again

A request is a file run/<name>.request and a signal to the supervisor (SIGUSR2; a
start is SIGUSR1, "start what is not running"). Each call returns once the
supervisor has done what was asked, or raises ServiceRequestError.
"""

from __future__ import annotations

import os
import time

from esc.config import NodeHome
from esc.node.processes import (
    ALL_SERVICE_NAMES,
    RESTART,
    STOP,
    SUPERVISOR,
    ProcessRecord,
    held_path,
    live_record,
    request_path,
    write_request,
)
from esc.node.supervisor import REQUEST_SIGNAL, START_SIGNAL, STOP_TIMEOUT

# A planned stop may take as long as the supervisor allows a service to stop.
REQUEST_TIMEOUT = STOP_TIMEOUT + 10


class ServiceRequestError(Exception):
    """The supervisor did not do what was asked; the message says why."""


def _supervisor(home: NodeHome, name: str) -> ProcessRecord:
    if name not in ALL_SERVICE_NAMES:
        raise ServiceRequestError(
            f"no service {name!r} on an ESC node (its services: {', '.join(ALL_SERVICE_NAMES)})"
        )
    record = live_record(home.run, SUPERVISOR)
    if record is None:
        raise ServiceRequestError(
            f"the node in {home.root} is not running under its supervisor: escadm start"
        )
    return record


def _wait(done, timeout: float, what: str, supervisor: ProcessRecord, home: NodeHome) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if not supervisor.alive():
            raise ServiceRequestError(f"the supervisor exited before {what}")
        if time.monotonic() > deadline:
            raise ServiceRequestError(
                f"{what} did not happen within {timeout:g} s; see {home.log / 'supervisor.log'}"
            )
        time.sleep(0.05)


def request_restart(home: NodeHome, name: str, timeout: float = REQUEST_TIMEOUT) -> ProcessRecord:
    """Restart service `name` (stopped its own way, started again at once; the exit is
    not counted as a death). Returns the record of the new process."""
    supervisor = _supervisor(home, name)
    before = live_record(home.run, name)
    write_request(home.run, name, RESTART)
    os.kill(supervisor.pid, REQUEST_SIGNAL)
    started: list[ProcessRecord] = []

    def restarted() -> bool:
        if request_path(home.run, name).exists():
            return False
        record = live_record(home.run, name)
        if record is not None and (before is None or record.pid != before.pid):
            started.append(record)
            return True
        return False

    _wait(restarted, timeout, f"the restart of {name}", supervisor, home)
    return started[-1]


def request_stop(home: NodeHome, name: str, timeout: float = REQUEST_TIMEOUT) -> bool:
    """Stop service `name` and keep it stopped until request_start (or escadm start).
    False when it was not running."""
    supervisor = _supervisor(home, name)
    was_running = live_record(home.run, name) is not None
    if not was_running and held_path(home.run, name).exists():
        return False
    write_request(home.run, name, STOP)
    os.kill(supervisor.pid, REQUEST_SIGNAL)
    _wait(
        lambda: not request_path(home.run, name).exists() and live_record(home.run, name) is None,
        timeout,
        f"the stop of {name}",
        supervisor,
        home,
    )
    return was_running


def request_start(home: NodeHome, name: str, timeout: float = REQUEST_TIMEOUT) -> bool:
    """Start service `name` if it is not running (held or not); False when it ran."""
    supervisor = _supervisor(home, name)
    if live_record(home.run, name) is not None:
        return False
    os.kill(supervisor.pid, START_SIGNAL)
    _wait(
        lambda: live_record(home.run, name) is not None and not held_path(home.run, name).exists(),
        timeout,
        f"the start of {name}",
        supervisor,
        home,
    )
    return True
