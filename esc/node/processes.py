"""The node's processes: which services it has, and their records under run/.

Near a leaf (it imports only esc.files and the VNF program's standard-library
helpers), so any layer may ask which services run.

A record holds the pid, the process group and the process start time; a
record whose pid now belongs to another process (pid reuse after a crash)
is stale and is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from esc.files import write_atomic
from esc.vim.vnf import process_start_ticks as start_ticks


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    pgid: int
    start_ticks: int

    @classmethod
    def of(cls, name: str, pid: int) -> ProcessRecord:
        return cls(name, pid, os.getpgid(pid), start_ticks(pid))

    def alive(self) -> bool:
        """The recorded process still runs (same pid AND same start time)."""
        try:
            if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                return False
            return start_ticks(self.pid) == self.start_ticks
        except (OSError, ValueError, psutil.Error):
            return False


def record_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def write_record(run_dir: Path, record: ProcessRecord) -> None:
    write_atomic(record_path(run_dir, record.name), json.dumps(asdict(record)).encode())


def read_record(run_dir: Path, name: str) -> ProcessRecord | None:
    """The record if present and well-formed; None otherwise."""
    try:
        data = json.loads(record_path(run_dir, name).read_text())
        return ProcessRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove_record(run_dir: Path, name: str) -> None:
    record_path(run_dir, name).unlink(missing_ok=True)


def live_record(run_dir: Path, name: str) -> ProcessRecord | None:
    """The record of `name` if that process runs; a stale record is removed."""
    record = read_record(run_dir, name)
    if record is None:
        return None
    if record.alive():
        return record
    remove_record(run_dir, name)
    return None


@dataclass(frozen=True)
class ServiceSpec:
    """How the supervisor runs one service: its argv and how it is stopped."""

    name: str
    command: list[str]
    stop_signal: int = signal.SIGTERM
    # The whole process group, or the process alone: a postmaster stops its own
    # children in order, and a signal of the group would reach them first.
    signal_group: bool = True
    # Stopped once the others have stopped: the database outlives its clients, so an
    # escmanager finishing its transactions can still write them.
    stop_last: bool = False
    # Stopped before the others: an HA node's escmanager hands the active role over to
    # the peer while keepalived and PostgreSQL still run (stopped first, they would make
    # the peer take over as from a failed node, fencing this one).
    stop_first: bool = False
    # Called before each start; True at the supervisor's own start, False at a restart.
    before_start: Callable[[bool], None] | None = None
    # A stop of its own (it blocks until done) in place of stop_signal.
    stop: Callable[[], None] | None = None


@dataclass(frozen=True)
class Death:
    """One exit of a supervised service: when, after how long, and how."""

    at: str  # ISO 8601, UTC
    ran_s: float
    returncode: int  # negative: killed by that signal (subprocess's convention)

    @property
    def how(self) -> str:
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit code {self.returncode}"


@dataclass(frozen=True)
class GivenUp:
    """The supervisor stopped restarting a service: which, when, and its last deaths."""

    name: str
    at: str  # ISO 8601, UTC
    deaths: list[Death] = field(default_factory=list)

    @property
    def reason(self) -> str:
        hows = ", ".join(death.how for death in self.deaths)
        first, last = (datetime.fromisoformat(d.at) for d in (self.deaths[0], self.deaths[-1]))
        span = (last - first).total_seconds()
        return f"it died {len(self.deaths)} times in {span:.0f} s ({hows})"

    def describe(self) -> str:
        return (
            f"{self.name} was given up by the supervisor at {self.at}: {self.reason}; "
            f"see log/{self.name}.log and log/{self.name}.out, fix the cause, then escadm start"
        )

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "reason": self.reason,
            "deaths": [{**asdict(d), "how": d.how} for d in self.deaths],
        }


def given_up_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.given-up.json"


def write_given_up(run_dir: Path, given_up: GivenUp) -> None:
    write_atomic(given_up_path(run_dir, given_up.name), json.dumps(asdict(given_up)).encode())


def read_given_up(run_dir: Path, name: str) -> GivenUp | None:
    try:
        data = json.loads(given_up_path(run_dir, name).read_text())
        return GivenUp(data["name"], data["at"], [Death(**d) for d in data["deaths"]])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remove_given_up(run_dir: Path, name: str) -> None:
    given_up_path(run_dir, name).unlink(missing_ok=True)


SUPERVISOR = "supervisor"
# A standalone node's services in start order, each run as `python -m MODULE --home H`.
SERVICE_MODULES = {"escmanager": "esc.node.escmanager", "mona": "esc.monitor.service"}
SERVICE_NAMES = tuple(SERVICE_MODULES)
# An HA node's, in start order: its database first (escmanager needs it), keepalived
# before the gateway watch (keepalived's start resets the track files the watch keeps).
PGSQL = "pgsql"
KEEPALIVED = "keepalived"
GATEWAY_WATCH = "gateway-watch"
HA_SERVICE_NAMES = (PGSQL, KEEPALIVED, GATEWAY_WATCH, *SERVICE_NAMES)
ALL_SERVICE_NAMES = HA_SERVICE_NAMES


def service_names(ha: bool) -> tuple[str, ...]:
    """The services of a node: an HA node's (`[ha] enabled`) or a standalone one's."""
    return HA_SERVICE_NAMES if ha else SERVICE_NAMES


# Asking the running supervisor to restart or stop one service: the request is a file
# run/<name>.request holding the verb, and a signal tells the supervisor to look. A
# file, not a signal alone, so that it names the service and survives until taken.
RESTART = "restart"
STOP = "stop"
REQUESTS = (RESTART, STOP)


def request_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.request"


def write_request(run_dir: Path, name: str, verb: str) -> None:
    if verb not in REQUESTS:
        raise ValueError(f"unknown service request {verb!r}")
    write_atomic(request_path(run_dir, name), verb.encode())


def take_request(run_dir: Path, name: str) -> str | None:
    """The pending request for `name` (removed as it is read), None when there is none."""
    path = request_path(run_dir, name)
    try:
        verb = path.read_text().strip()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    return verb if verb in REQUESTS else None


def held_path(run_dir: Path, name: str) -> Path:
    """Present while `name` is stopped on request (escadm keepalived stop): the
    supervisor does not restart it until asked to start it."""
    return run_dir / f"{name}.held"


def is_held(run_dir: Path, name: str) -> bool:
    return held_path(run_dir, name).exists()
