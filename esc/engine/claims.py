"""Who runs a transaction: the one place that decides it.

Every executor (one per controller process) has an owner identity, a new id
per process start, recorded in the `owners` table with its node, host, pid
and a heartbeat it refreshes. An executor runs a transaction only after
`claim()` succeeded for it: a compare-and-swap on the transaction row that
sets it IN_PROGRESS, records the owner and increments its epoch, and that
only one claimer can win (the row count says who). Any number of
controllers may share one database: only the claimer runs the transaction.

A QUEUED transaction is claimable by any active owner. An IN_PROGRESS one
only when no live owner holds it: its owner's heartbeat is older than
OWNER_TIMEOUT, its owner row is gone, or its owner ran on this host in a
process that no longer exists (a crash is seen at once, not after the
timeout). Taking one over counts as a resume.

Every engine write made for a claim is fenced (`fenced_write`): it checks,
in the same database transaction, that the transaction is still held by
this owner at this epoch, and raises NotOwner otherwise; VIM calls that
change something are checked the same way before they are made
(`check_current`, by esc.engine.step_vim). So an executor that was presumed
dead and then woke up changes nothing.

Only the holder of the active role claims, and every fenced write also
checks the role's lease (esc.engine.lease) in the same database
transaction: a node that lost the role changes nothing either. A
standalone node always holds it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psutil
from sqlalchemy import Row, Select, delete, select, update
from sqlalchemy.orm import Session

from esc.db.models import ExecutorOwner, Transaction, TransactionState, new_id, utcnow
from esc.db.session import Database
from esc.engine.lease import NotActive, StandaloneLease

log = logging.getLogger(__name__)

# How often an executor refreshes its heartbeat (seconds).
HEARTBEAT_INTERVAL = 1.0
# An owner whose heartbeat is older than this is dead: its transactions may be taken
# over. Many heartbeats long, so a busy database or a slow disk is not a death.
OWNER_TIMEOUT = 15.0

ACTIVE = "ACTIVE"


class NotOwner(Exception):
    """This executor no longer holds the transaction; it must stop without acting."""


@dataclass(frozen=True)
class Claim:
    """The right of `owner` to run transaction `tx_id`, valid while its epoch is current."""

    tx_id: str
    owner: str
    epoch: int
    resumes: int  # the transaction's resume count after this claim
    resumed: bool  # taken over from an owner that is no longer live
    # The active role's lease this claim was made under: checked with the claim.
    lease: StandaloneLease = field(default_factory=StandaloneLease, compare=False)


def _process_started(pid: int) -> float:
    return psutil.Process(pid).create_time()


class Claimant:
    """This process's owner identity: registered at start, beaten while running, retired at stop."""

    def __init__(
        self, db: Database, node: str, role: str = ACTIVE, lease: StandaloneLease | None = None
    ) -> None:
        self.db = db
        self.lease = lease or StandaloneLease()
        self.id = new_id()
        self.node = node
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.process_started = _process_started(self.pid)
        self.role = role

    def register(self) -> None:
        """Record this owner; forget owners dead for long (they hold nothing any more)."""
        now = utcnow()
        with self.db.write() as session:
            session.execute(
                delete(ExecutorOwner).where(
                    ExecutorOwner.heartbeat_at < now - timedelta(seconds=OWNER_TIMEOUT)
                )
            )
            session.add(self._row(now))
        log.info("transaction executor %s registered (pid %s)", self.id, self.pid)

    def beat(self) -> None:
        """Refresh the heartbeat; re-record this owner if its row went away (a restore)."""
        now = utcnow()
        with self.db.write() as session:
            result = session.execute(
                update(ExecutorOwner).where(ExecutorOwner.id == self.id).values(heartbeat_at=now)
            )
            if result.rowcount == 0:
                session.add(self._row(now))

    def retire(self) -> None:
        """At a clean stop: what this owner leaves in progress is resumable at once."""
        with self.db.write() as session:
            session.execute(delete(ExecutorOwner).where(ExecutorOwner.id == self.id))

    def _row(self, now: datetime) -> ExecutorOwner:
        return ExecutorOwner(
            id=self.id,
            node=self.node,
            host=self.host,
            pid=self.pid,
            process_started=self.process_started,
            role=self.role,
            started_at=now,
            heartbeat_at=now,
        )

    # deciding ---------------------------------------------------------------------------

    def is_live(self, session: Session, owner_id: str | None) -> bool:
        """Whether `owner_id` may still be running what it claimed."""
        if owner_id is None:
            return False
        if owner_id == self.id:
            return True
        owner = session.get(ExecutorOwner, owner_id)
        if owner is None:
            return False
        if utcnow() - owner.heartbeat_at > timedelta(seconds=OWNER_TIMEOUT):
            return False
        if owner.host == self.host:
            try:
                return abs(_process_started(owner.pid) - owner.process_started) < 0.01
            except psutil.Error:
                return False
        return True

    def claim(self, tx_id: str) -> Claim | None:
        """Claim `tx_id` for this owner; None when it is final, or another live owner
        holds it, or another claimer won the race."""
        if self.role != ACTIVE or not self.lease.held():
            return None
        with self.db.write() as session:
            try:
                self.lease.check(session)
            except NotActive:
                return None
            row = session.execute(
                select(
                    Transaction.state,
                    Transaction.owner,
                    Transaction.epoch,
                    Transaction.resumes,
                    Transaction.started_at,
                ).where(Transaction.id == tx_id)
            ).one_or_none()
            if row is None or row.state.is_final:
                return None
            resumed = row.state is TransactionState.IN_PROGRESS
            if resumed and self.is_live(session, row.owner):
                return None
            result = session.execute(
                update(Transaction)
                .where(
                    Transaction.id == tx_id,
                    Transaction.state == row.state,
                    Transaction.epoch == row.epoch,
                )
                .values(
                    state=TransactionState.IN_PROGRESS,
                    owner=self.id,
                    epoch=row.epoch + 1,
                    resumes=row.resumes + int(resumed),
                    started_at=row.started_at or utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                return None  # another claimer changed the row since it was read
        return Claim(tx_id, self.id, row.epoch + 1, row.resumes + int(resumed), resumed, self.lease)

    def claimable(self, queued_too: bool = True) -> list[str]:
        """Open transactions no live owner holds, oldest first (what reconciliation
        resumes); only IN_PROGRESS ones unless `queued_too`."""
        states = [TransactionState.IN_PROGRESS]
        if queued_too:
            states.append(TransactionState.QUEUED)
        with self.db.read() as session:
            rows = session.execute(
                select(Transaction.id, Transaction.state, Transaction.owner)
                .where(Transaction.state.in_(states))
                .order_by(Transaction.created_at)
            ).all()
            return [
                r.id
                for r in rows
                if r.state is TransactionState.QUEUED or not self.is_live(session, r.owner)
            ]


def _require_current(row: Row[Any] | None, claim: Claim) -> None:
    if not claim.lease.held():
        raise NotOwner(
            f"transaction {claim.tx_id}: this node does not hold the active role any more"
        )
    if row is None or (row.owner, row.epoch) != (claim.owner, claim.epoch) or row.state.is_final:
        raise NotOwner(
            f"transaction {claim.tx_id} is no longer held by executor {claim.owner} "
            f"at epoch {claim.epoch}"
        )


def _held(claim: Claim) -> Select[Any]:
    return select(Transaction.owner, Transaction.epoch, Transaction.state).where(
        Transaction.id == claim.tx_id
    )


def check(session: Session, claim: Claim) -> None:
    """Raise NotOwner unless `claim` is still current; locks the transaction row, so no
    claim can supersede it before the caller's database transaction ends."""
    _require_current(session.execute(_held(claim).with_for_update()).one_or_none(), claim)
    try:
        claim.lease.check(session)
    except NotActive as exc:
        raise NotOwner(f"transaction {claim.tx_id}: {exc}") from None


def check_current(db: Database, claim: Claim) -> None:
    """NotOwner unless `claim` is current: asked before an action outside the database."""
    with db.read() as session:
        _require_current(session.execute(_held(claim)).one_or_none(), claim)


@contextmanager
def fenced_write(db: Database, claim: Claim) -> Iterator[Session]:
    """A write session that commits only while `claim` is current (NotOwner otherwise)."""
    with db.write() as session:
        check(session, claim)
        yield session
