"""Runs transactions to their end, and reconciles the ones a stop left behind.

Workers take transaction ids from a queue and run one only once they have
claimed it (esc.engine.claims decides who runs a transaction, also between
controllers sharing a database); every write and VIM call of its steps is
fenced by that claim. The one-in-flight-per-deployment rule is enforced by
the database (Transaction.lock_key), so two workers never drive the same
deployment.

Transactions reach the queue two ways: the API enqueues what it accepted at
once, and a poller picks up QUEUED rows written by other processes (MONA's
automatic recoveries and scaling): the database is the hand-over, not a
private channel. The poller is the active role's one periodic loop: it also
keeps the executor's heartbeat, takes over the transactions of dead
executors, and does the role's other chores (forgetting expired idempotency
keys, say).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.config import EngineSettings
from esc.db.models import Transaction, TransactionState, utcnow
from esc.db.session import Database
from esc.engine.claims import HEARTBEAT_INTERVAL, Claim, Claimant, NotOwner, fenced_write
from esc.engine.lease import StandaloneLease
from esc.engine.operations import (
    OPERATIONS,
    ROLLBACK,
    Interrupted,
    OperationFailed,
    StepContext,
)
from esc.engine.orphans import quarantine_orphans
from esc.engine.step_vim import RetryPolicy, StepVim
from esc.engine.vims import Vims
from esc.logtags import transaction_context
from esc.vim.base import VimError

log = logging.getLogger(__name__)

_STOP = object()
# What _steps answers when this executor must leave the transaction as it is.
_LEFT = object()
# How often QUEUED transactions written by other processes are looked for.
PICKUP_INTERVAL = 0.2
# How often transactions of executors that died meanwhile are looked for.
TAKE_OVER_INTERVAL = 5.0


@dataclass(frozen=True)
class Chore:
    """Periodic work of the active role, done by the executor's poller every
    `interval` s; a failure is logged and tried again an interval later."""

    what: str  # for the log: "looking for transactions to take over"
    interval: float
    work: Callable[[], object]


class Executor:
    def __init__(
        self,
        db: Database,
        vims: Vims,
        workers: int,
        max_resumes: int,
        node: str = "",
        retry: RetryPolicy | None = None,
        lease: StandaloneLease | None = None,
        chores: tuple[Chore, ...] = (),
    ) -> None:
        self.db = db
        self.vims = vims
        self.chores = chores
        self.retry = retry or RetryPolicy.of(EngineSettings())
        self.claimant = Claimant(db, node, lease=lease)
        # Claimed by reconciliation, waiting in the queue for a worker.
        self._claims: dict[str, Claim] = {}
        self.workers = workers
        self.max_resumes = max_resumes
        self.stopping = threading.Event()
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pickup: threading.Thread | None = None
        self._running: set[str] = set()
        self._queued: set[str] = set()  # in the queue, not yet taken by a worker
        self._interrupted: set[str] = set()
        self._lock = threading.Lock()

    # life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.claimant.register()
        self.reconcile()
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"tx-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._pickup = threading.Thread(target=self._pick_up, name="tx-pickup", daemon=True)
        self._pickup.start()

    def stop(self, timeout: float) -> list[str]:
        """Stop taking work; wait up to `timeout` s for running transactions.

        Returns the ids still running at the deadline: they stay in progress
        in the database and are resumed at the next start.
        """
        self.stopping.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._pickup is not None:
            self._pickup.join(max(PICKUP_INTERVAL * 5, deadline - time.monotonic()))
        try:
            self.claimant.retire()
        except Exception:  # its heartbeat stops anyway: it is seen dead after OWNER_TIMEOUT
            log.warning("could not retire transaction executor %s", self.claimant.id, exc_info=True)
        with self._lock:
            return sorted(self._running | self._interrupted)

    def alive(self) -> bool:
        threads = [*self._threads, self._pickup] if self._threads else []
        return bool(threads) and all(t.is_alive() for t in threads)

    def enqueue(self, tx_id: str) -> None:
        with self._lock:
            if tx_id in self._queued or tx_id in self._running:
                return  # one worker per transaction
            self._queued.add(tx_id)
        self._queue.put(tx_id)

    def _pick_up(self) -> None:
        """Find QUEUED transactions, keep this executor's heartbeat, do the chores."""
        take_over = Chore(
            "looking for transactions to take over", TAKE_OVER_INTERVAL, self._take_over
        )
        chores = (take_over, *self.chores)
        last_beat = time.monotonic()
        last_done = [last_beat] * len(chores)
        while not self.stopping.wait(PICKUP_INTERVAL):
            # A missed heartbeat is tried again at once: missing a few, the executor
            # is taken for dead and its transactions are taken over.
            if time.monotonic() - last_beat >= HEARTBEAT_INTERVAL:
                try:
                    self.claimant.beat()
                    last_beat = time.monotonic()
                except Exception:
                    log.warning("refreshing the executor's heartbeat failed", exc_info=True)
            for index, chore in enumerate(chores):
                if time.monotonic() - last_done[index] >= chore.interval:
                    last_done[index] = time.monotonic()
                    try:
                        chore.work()
                    except Exception:
                        log.warning("%s failed", chore.what, exc_info=True)
            try:
                with self.db.read() as session:
                    queued = session.scalars(
                        select(Transaction.id).where(Transaction.state == TransactionState.QUEUED)
                    ).all()
            except Exception:  # the database may be away for a moment: try again
                log.warning("looking for queued transactions failed", exc_info=True)
                continue
            for tx_id in queued:
                self.enqueue(tx_id)

    @property
    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    # reconciliation -------------------------------------------------------------

    def reconcile(self) -> None:
        """At start-up: quarantine orphan VMs, then resume or close every open transaction
        that no live executor holds."""
        quarantine_orphans(self.db, self.vims)
        self._take_over(queued_too=True)

    def _take_over(self, queued_too: bool = False) -> None:
        """Claim and queue the open transactions no live executor holds: at start all of
        them; then now and again those in progress (another controller on this database
        may have died). QUEUED ones are otherwise left to the pick-up, which queues them."""
        for tx_id in self.claimant.claimable(queued_too):
            with self._lock:
                if tx_id in self._queued or tx_id in self._running:
                    continue
            claim = self.claimant.claim(tx_id)
            if claim is None:
                continue  # another executor claimed it meanwhile
            if claim.resumed:
                log.info("transaction %s resumed: the executor running it is gone", tx_id)
            if self._within_resumes(claim):
                with self._lock:
                    self._claims[tx_id] = claim
                self.enqueue(tx_id)

    def _within_resumes(self, claim: Claim) -> bool:
        """Close the transaction FAILED when it has been resumed too often (False)."""
        if claim.resumes <= self.max_resumes:
            return True
        reason = (
            f"abandoned after {claim.resumes - 1} controller restarts in the middle of "
            "it ([engine] max_resumes); check the log, then retry the request"
        )
        log.error("transaction %s %s", claim.tx_id, reason)
        self._end(claim, reason)
        return False

    # execution ----------------------------------------------------------------

    def _work(self) -> None:
        while not self.stopping.is_set():
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, str)
            with self._lock:
                self._queued.discard(item)
                self._running.add(item)
            try:
                with transaction_context(item):
                    self.run(item)
            except Exception:  # never let one transaction kill a worker
                log.exception("transaction %s: unexpected error in the executor", item)
            finally:
                with self._lock:
                    self._running.discard(item)

    def run(self, tx_id: str) -> None:
        with self._lock:
            claim = self._claims.pop(tx_id, None)
        claim = claim or self.claimant.claim(tx_id)
        if claim is None:
            return  # final, or run by another executor
        if not self._within_resumes(claim):
            return
        with self.db.read() as session:
            tx = session.get(Transaction, tx_id)
            operation, deployment_id = tx.operation, tx.deployment_id
        handler = OPERATIONS[operation]
        try:
            driver = self.vims.for_deployment(deployment_id)
        except VimError as exc:
            self._end(claim, f"the deployment's VIM cannot be used: {exc}")
            return
        vim = StepVim(driver, self.db, claim, self.retry, self.stopping)
        context = StepContext(self.db, vim, claim, self.stopping)
        with self.db.read() as session:
            failure = session.get(Transaction, tx_id).progress.get(ROLLBACK)
        if failure is None:  # else: failed already, resumed in the middle of its rollback
            failure = self._steps(tx_id, lambda: handler.process(context))
            if failure is None:
                self._end(claim, None)
                return
        if failure is _LEFT:
            return
        if handler.rollback is not None:
            failure = self._roll_back(context, handler.rollback, failure)
            if failure is _LEFT:
                return
        self._end(claim, failure)

    def _steps(self, tx_id: str, steps: Callable[[], None]) -> str | object | None:
        """Run `steps`: None when they succeed, the reason when they fail, _LEFT when
        this executor must leave the transaction (the node stops, or it lost the claim)."""
        try:
            steps()
        except NotOwner as exc:
            log.warning("%s; this executor stops running it", exc)
            return _LEFT
        except Interrupted:
            log.info("transaction %s left in progress: the node is stopping", tx_id)
            with self._lock:
                self._interrupted.add(tx_id)
            return _LEFT
        except OperationFailed as exc:
            return str(exc)
        except VimError as exc:  # a refusal: the VIM's own words are the reason
            return f"the VIM refused: {exc}"
        except Exception as exc:
            log.exception("transaction %s failed", tx_id)
            return f"internal error: {exc.__class__.__name__}: {exc}"
        return None

    def _roll_back(
        self, context: StepContext, rollback: Callable[[StepContext], None], failure: str
    ) -> str | object:
        """Undo what the failed transaction did; the reason to end it with (or _LEFT)."""

        def steps() -> None:
            with context.write() as session:
                tx = session.get(Transaction, context.tx_id)
                tx.progress = {**tx.progress, ROLLBACK: failure}
            log.info("transaction %s failed (%s): rolling back", context.tx_id, failure)
            rollback(context)

        problem = self._steps(context.tx_id, steps)
        if problem is _LEFT:
            return _LEFT
        if problem is not None:
            return f"{failure}; rolling back failed too, undeploy to clean up: {problem}"
        return failure

    def _end(self, claim: Claim, reason: str | None) -> None:
        tx_id = claim.tx_id
        try:
            with fenced_write(self.db, claim) as session:
                self._finish(session, session.get(Transaction, tx_id), reason)
        except NotOwner as exc:
            log.warning("%s; its end is left to its holder", exc)
            return
        except Exception as exc:
            # The model change of the end failed; still end the transaction, so
            # the deployment is not locked forever.
            log.exception("transaction %s: recording its end failed", tx_id)
            reason = f"internal error while ending the transaction: {exc}"
            with fenced_write(self.db, claim) as session:
                tx = session.get(Transaction, tx_id)
                tx.state, tx.error = TransactionState.FAILED, reason
                tx.finished_at, tx.lock_key = utcnow(), None
        state = "FAILED: " + reason if reason else "SUCCESS"
        log.info("transaction %s %s", tx_id, state)

    @staticmethod
    def _finish(session: Session, tx: Transaction, reason: str | None) -> None:
        handler = OPERATIONS[tx.operation]
        if reason is None:
            handler.succeed(session, tx)
            tx.state = TransactionState.SUCCESS
        else:
            handler.fail(session, tx, reason)
            tx.state = TransactionState.FAILED
            tx.error = reason
        tx.finished_at = utcnow()
        tx.lock_key = None
