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
from dataclasses import asdict, dataclass
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


SUPERVISOR = "supervisor"
# The node's services in start order, each run as `python -m MODULE --home H`.
SERVICE_MODULES = {"escmanager": "esc.node.escmanager", "mona": "esc.monitor.service"}
SERVICE_NAMES = tuple(SERVICE_MODULES)
