"""The active role: what only the node holding it runs.

A node's API side (reads, validation, accepting writes into durable
transactions, health) is always on; the active role runs on one node of the
database's nodes at a time, under the lease (esc.engine.lease): the schema
migration (a step of taking the role on a primary, never something a
standby does at start), VIM recovery, reconciliation of open transactions,
the transaction executor, the event notifier, and forgetting the idempotency
keys older than [api] idempotency_ttl. Taking the role is a
switch inside a running process, not a cold start, so a standby becomes
active in well under a second. A standalone node takes it at start.
"""

from __future__ import annotations

import logging

from esc.config import Settings
from esc.db.migrate import Migration, upgrade_to_head
from esc.db.session import Database
from esc.engine import idempotency
from esc.engine.executor import Chore, Executor
from esc.engine.lease import StandaloneLease
from esc.engine.notifier import Notifier
from esc.engine.step_vim import RetryPolicy
from esc.engine.vims import Vims
from esc.monitor.mappings import install_defaults_if_empty

log = logging.getLogger(__name__)

# How often expired idempotency keys are looked for: a key is forgotten at most this
# much later than [api] idempotency_ttl says, and the look is one indexed delete.
PRUNE_INTERVAL = 60.0


class ActiveRole:
    """One holding of the active role: `take()` once, `drop()` once (a new holding
    is a new object, so nothing of a previous one is reused half-stopped)."""

    def __init__(
        self, db: Database, vims: Vims, settings: Settings, lease: StandaloneLease
    ) -> None:
        self.db = db
        self.vims = vims
        self.lease = lease
        self.executor = Executor(
            db,
            vims,
            settings.engine.workers,
            settings.engine.max_resumes,
            node=settings.node.name,
            retry=RetryPolicy.of(settings.engine),
            lease=lease,
            chores=(
                Chore(
                    "forgetting expired idempotency keys",
                    PRUNE_INTERVAL,
                    lambda: self.forget_expired_keys(settings.api.idempotency_ttl),
                ),
            ),
        )
        self.notifier = Notifier(db, settings.notifications)
        # What taking the role migrated, and how long the switchover waited for it.
        self.migration: Migration | None = None

    def take(self) -> None:
        """Raises SchemaTooNew, before anything else, on a schema of a newer release that
        this one cannot run on."""
        self.migration = upgrade_to_head(self.db.engine)
        self.lease.acquire()
        self.vims.recover()
        with self.db.write() as session:
            if install_defaults_if_empty(session):
                log.info("default dynamic mappings installed")
        self.executor.start()
        self.notifier.start()

    def forget_expired_keys(self, ttl: float) -> int:
        with self.db.write() as session:
            forgotten = idempotency.prune(session, ttl)
        if forgotten:
            log.info("%d idempotency key(s) older than %g s forgotten", forgotten, ttl)
        return forgotten

    def drop(self, timeout: float) -> list[str]:
        """Give the role up: writes are refused from this moment; running transactions
        get up to `timeout` s to end. Returns those left for the next holder."""
        self.lease.release()
        left = self.executor.stop(timeout)
        self.notifier.stop()
        return left

    def alive(self) -> bool:
        return self.executor.alive() and self.notifier.alive()
