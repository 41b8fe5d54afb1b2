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
# The node's services in start order, each run as `python -m MODULE --home H`.
SERVICE_MODULES = {"escmanager": "esc.node.escmanager", "mona": "esc.monitor.service"}
SERVICE_NAMES = tuple(SERVICE_MODULES)
