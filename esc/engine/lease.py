"""The active role's lease: which node may run the engine and accept writes.

Of the nodes that share one database (the two of an active/standby pair),
only the holder of the active role runs transactions, delivers events and
takes northbound writes. The role is held under a lease, one row of
`active_lease`: taking it increments the epoch, and every engine and
northbound write checks, in its own database transaction, that the epoch is
still this node's. A node that lost the role therefore cannot complete a
write even before it has noticed, on the same database (the epoch moved on)
or on an old primary cut off from its synchronous standby (its commits wait
and are never acknowledged).

The holder renews the lease often; a renewal is a write, so on a pair it is
confirmed only once the standby has it too. A lease not confirmed for
`ttl` seconds is not held here: the node stops accepting writes at once,
and takes them again as soon as a renewal succeeds at the same epoch. Time
is this process's monotonic clock: no clock of another node is trusted.

A standalone node always holds the lease (`StandaloneLease`): nothing
competes with it, and several controllers on one database share its work
through the transaction claims (esc.engine.claims) as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from esc.db.models import ActiveLease, ExecutorOwner, utcnow
from esc.db.session import Database
from esc.errors import Unavailable

log = logging.getLogger(__name__)

NAME = "active"
# A lease not confirmed for this long is not held: writes stop until it is again.
LEASE_TTL = 1.0
# How often the holder renews it: several renewals per TTL, so one slow commit
# does not interrupt writes.
RENEW_INTERVAL = 0.2


class NotActive(Unavailable):
    """This node does not hold the active role (or cannot confirm it just now)."""


class StandaloneLease:
    """A standalone node's lease: always held."""

    epoch: int | None = 0

    def acquire(self) -> int:
        return 0

    def release(self) -> None:
        """Nothing to give up: a standalone node holds the role while it runs."""

    def held(self) -> bool:
        return True

    def check(self, session: Session) -> None:
        """Raise NotActive unless this node holds the role (never, standalone)."""


class DatabaseLease(StandaloneLease):
    """The lease of one node of a pair: acquired on taking the active role, renewed by a
    thread while held, released on dropping the role."""

    def __init__(
        self,
        db: Database,
        node: str,
        address: str,
        ttl: float = LEASE_TTL,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        # Called (from the renewing thread) when another node took the lease.
        self.on_lost = on_lost
        self.node = node
        self.address = address
        self.ttl = ttl
        self.epoch = None
        # Why the holder has set its role aside for a moment (a restore swapping the
        # data in), which is what a write is told meanwhile; None otherwise.
        self.paused: str | None = None
        self._confirmed_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # holding ------------------------------------------------------------------------

    def acquire(self) -> int:
        """Take the role: the epoch moves on, so whatever the previous holder still
        tries to write is refused. Returns the new epoch."""
        started = time.monotonic()
        with self.db.write() as session:
            row = session.get(ActiveLease, NAME, with_for_update=True)
            if row is None:
                row = ActiveLease(name=NAME, epoch=0)
                session.add(row)
            previous = row.node
            row.epoch += 1
            row.node, row.address, row.renewed_at = self.node, self.address, utcnow()
            row.handover_to = None
            epoch = row.epoch
            # The executors of earlier holdings hold nothing now: their open transactions
            # are resumed at once, not after their heartbeats time out (their writes are
            # refused by the epoch, and the node that took over fenced them first).
            session.execute(delete(ExecutorOwner))
        self.epoch = epoch
        self._confirmed_until = started + self.ttl
        log.info("active role taken at epoch %s (previous holder: %s)", epoch, previous or "none")
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()
        return epoch

    def renew(self) -> bool:
        """Confirm the lease; False once another node took it (the role is lost)."""
        epoch = self.epoch
        if epoch is None:
            return False
        started = time.monotonic()
        with self.db.write() as session:
            result = session.execute(
                update(ActiveLease)
                .where(ActiveLease.name == NAME, ActiveLease.epoch == epoch)
                .values(renewed_at=utcnow())
            )
        if result.rowcount != 1:
            if self.epoch == epoch:
                self.epoch = None
                log.warning("active role lost: another node took the lease after epoch %s", epoch)
            return False
        self._confirmed_until = started + self.ttl
        return True

    def hand_over(self, to_node: str) -> None:
        """A planned switchover: record that `to_node` (its address) takes the role from
        here (it then need not fence this node), and release it. The record is a write
        like any other, so on a pair it is on the standby before this returns."""
        epoch = self.epoch
        self.release()
        with self.db.write() as session:
            session.execute(
                update(ActiveLease)
                .where(ActiveLease.name == NAME, ActiveLease.epoch == epoch)
                .values(handover_to=to_node)
            )

    def release(self) -> None:
        """Drop the role at once: from now on this node refuses writes. The row stays;
        the next holder moves the epoch on."""
        self.epoch = None
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(RENEW_INTERVAL):
            try:
                renewed = self.renew()
            except Exception as exc:  # the database away for a moment: held() says so
                log.warning("renewing the active role's lease failed: %s", exc)
                continue
            if not renewed:
                if self.on_lost is not None and not self._stop.is_set():
                    self.on_lost()
                return

    # asking ---------------------------------------------------------------------------

    def held(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._confirmed_until

    def check(self, session: Session) -> None:
        if self.epoch is None and self.paused:
            raise NotActive(
                f"node {self.node} is {self.paused}: writes are refused until it is done; "
                "retry in a moment"
            )
        if self.epoch is None:  # not the holder: no locking read (a standby is read-only)
            known = holder(session)
            raise NotActive(not_active_message(self.node, *(known[:2] if known else ("", ""))))
        epoch = session.scalar(
            select(ActiveLease.epoch).where(ActiveLease.name == NAME).with_for_update(read=True)
        )
        if epoch != self.epoch:
            known = holder(session)
            raise NotActive(not_active_message(self.node, *(known[:2] if known else ("", ""))))
        if not self.held():
            raise NotActive(
                f"node {self.node} cannot confirm its active role just now (its standby "
                "does not answer): writes wait until it does; retry in a moment"
            )


def not_active_message(node: str, holder: str, address: str) -> str:
    """What a node that does not hold the active role answers a write."""
    if holder and holder != node:
        where = f"the active node {holder}" + (f" ({address})" if address else "")
        return f"node {node} is the standby: writes go to {where} or to the pair's VIP"
    return f"node {node} does not hold the active role: writes go to the pair's VIP"


def holder(session: Session) -> tuple[str, str, int] | None:
    """(node, address, epoch) of the active role's holder as this database knows it."""
    row = session.execute(
        select(ActiveLease.node, ActiveLease.address, ActiveLease.epoch).where(
            ActiveLease.name == NAME
        )
    ).one_or_none()
    return (row.node, row.address, row.epoch) if row else None


def handed_over_to(session: Session) -> str | None:
    """The node the last holder handed the role to in a planned switchover, if any."""
    return session.scalar(select(ActiveLease.handover_to).where(ActiveLease.name == NAME))
