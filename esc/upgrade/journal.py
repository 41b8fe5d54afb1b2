"""The durable record of one upgrade of a pair: where it stands, step by step.

The orchestrator writes it before and after every step (atomically, fsynced), so an
orchestrator killed at any point (SIGKILL, a lost laptop) leaves a record that says
which step was running; `escadm upgrade status` reads it, and the same command run
again continues from that step. Each step is written so that running it again after
it was cut short is safe: it first looks at what the pair already is.

The record lives in the upgrade's directory (beside the pair access file, or
`--state-dir`), with a lock held while an orchestrator runs, so two cannot act on
one pair at once. Its format is versioned; an unknown one is refused, not guessed.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from esc.files import write_atomic

FORMAT = "esc-pair-upgrade/1"
RECORD = "journal.json"
LOCK = "lock"

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
# The upgrade as a whole.
IN_PROGRESS, COMPLETED, ROLLED_BACK = "in_progress", "completed", "rolled_back"


class JournalError(Exception):
    """The record cannot be used; the message says why and what to do."""


@dataclass
class Step:
    name: str
    title: str
    state: str = PENDING
    started: float | None = None
    ended: float | None = None
    detail: str = ""
    attempts: int = 0

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


@dataclass
class Record:
    id: str
    pair: str
    method: str
    source: str
    target: str
    started_at: float
    steps: list[Step]
    state: str = IN_PROGRESS
    ended_at: float | None = None
    error: str = ""
    # What the steps learnt and later steps need (which node went first, ...).
    facts: dict[str, Any] = field(default_factory=dict)
    # What the report shows: the measured figures.
    figures: dict[str, Any] = field(default_factory=dict)
    rollback: str = ""  # "", or what rollback was done and why
    resumed: int = 0  # how many times an orchestrator took it up again

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def current(self) -> Step | None:
        """The step to run next: the first not done."""
        return next((s for s in self.steps if s.state != DONE), None)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def of(cls, data: dict[str, Any], path: Path) -> Record:
        if data.get("format") != FORMAT:
            raise JournalError(
                f"{path}: format {data.get('format')!r} is not {FORMAT!r}: it was written by "
                "another escadm release; use that release's escadm upgrade status"
            )
        body = {k: v for k, v in data.items() if k != "format"}
        try:
            body["steps"] = [Step(**s) for s in body["steps"]]
            return cls(**body)
        except (KeyError, TypeError) as exc:
            raise JournalError(f"{path}: not a complete upgrade record ({exc})") from None


class Journal:
    """The record in `directory`, saved on every change."""

    def __init__(self, directory: Path, record: Record) -> None:
        self.directory = directory
        self.record = record

    @property
    def path(self) -> Path:
        return self.directory / RECORD

    @staticmethod
    def read(directory: Path) -> Record | None:
        path = directory / RECORD
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return Record.of(json.loads(text), path)
        except ValueError:
            raise JournalError(f"{path} is not JSON: it was not written by escadm") from None

    @classmethod
    def new(
        cls, directory: Path, pair: str, method: str, source: str, target: str, steps: list[Step]
    ) -> Journal:
        record = Record(
            id=uuid.uuid4().hex[:12],
            pair=pair,
            method=method,
            source=source,
            target=target,
            started_at=time.time(),
            steps=steps,
        )
        journal = cls(directory, record)
        previous = directory / RECORD
        if previous.exists():  # an ended upgrade's record is kept, renamed
            old = cls.read(directory)
            keep = directory / f"journal-{old.id if old else int(time.time())}.json"
            os.replace(previous, keep)
        journal.save()
        return journal

    def save(self) -> None:
        data = json.dumps(self.record.as_dict(), indent=1).encode()
        write_atomic(self.path, data, durable=True)

    # steps -----------------------------------------------------------------------

    def begin(self, step: Step) -> None:
        step.state = RUNNING
        step.started = time.time()
        step.ended = None
        step.attempts += 1
        self.save()

    def done(self, step: Step, detail: str) -> None:
        step.state = DONE
        step.ended = time.time()
        step.detail = detail
        self.save()

    def failed(self, step: Step, error: str) -> None:
        step.state = FAILED
        step.ended = time.time()
        step.detail = error
        self.record.error = error
        self.save()

    def end(self, state: str, error: str = "") -> None:
        self.record.state = state
        self.record.ended_at = time.time()
        self.record.error = error
        self.save()


class UpgradeLock:
    """One orchestrator per pair: an exclusive lock on the upgrade's directory, which
    the kernel drops when its holder dies (a SIGKILLed orchestrator holds nothing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def __enter__(self) -> UpgradeLock:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(
                f"another escadm upgrade of this pair is running (it holds "
                f"{self.directory / LOCK}): wait for it, or see escadm upgrade status"
            ) from None
        self._fd = fd
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
