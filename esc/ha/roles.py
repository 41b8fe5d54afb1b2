"""The role manager of an HA node: keepalived's state changes made into the node's role.

One thread of escmanager. keepalived tells it through its notify FIFO (no
process forked on the failover's path) when this node becomes MASTER (it
holds the VIP) or leaves it (BACKUP, FAULT, STOP). Between changes
`run_cycle()` runs every CYCLE seconds: the node's health into keepalived's
track file, and on the active the replication rule.

Taking the active role (MASTER), in order:
1. A standby promotes only when it is known to hold every acknowledged write:
   the node provider's witness record does not mark it outdated (an active
   marks its peer outdated before it ever commits without it). Otherwise it
   goes FAULT, says why, and hands the VIP on (`escadm ha force-active
   --discard-unreplicated` is the operator's explicit choice).
2. The old active is fenced through the node provider, unless it cannot take
   writes anyway: it handed the role over in a planned switchover (a record
   it wrote, replicated synchronously, before it stopped), or its host
   answers at once that its PostgreSQL is a standby or not running. A node
   that can do none of these does not take over.
3. PostgreSQL is promoted with synchronous replication off (there is no
   standby any more: its first write would wait for ever) after the peer was
   marked outdated, and the engine's active role is taken (lease epoch,
   migration, executor, notifier).

Leaving it (BACKUP/FAULT/STOP): the engine's role is dropped at once, then
PostgreSQL is restarted as a standby of the new active (rewound or re-cloned
by its service when it was a primary).

The replication rule on the active: synchronous while the standby streams.
When the standby is lost, commits wait; the active drops to asynchronous
commit only after it marked the standby outdated at the node provider, where
a later promotion sees it. If it cannot, writes keep waiting rather than
being acknowledged unsafely. The mark is cleared once the standby streams
synchronously again. Without a node provider an active never commits
without its standby, and a standby never takes over unless handed the role.

A restore on the active (`swap_in_restore`) keeps the VIP and the role: the
engine alone pauses while the restored data is swapped in, then the role is
taken again on it.

keepalived's events are handled on their own thread, never behind a cycle:
a cycle asks only this node's PostgreSQL, over its local socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from esc.config import NodeHome, Settings
from esc.db.aside import AsideError, swap_in
from esc.db.migrate import require_runnable
from esc.db.schema_compat import SchemaTooNew
from esc.engine.controller import Controller
from esc.engine.lease import DatabaseLease, handed_over_to
from esc.errors import Conflict, Unavailable
from esc.ha import replication
from esc.ha.keepalived import INSTANCE, KeepalivedPaths, NotifyFifo, TrackFile
from esc.ha.pgsql import Cluster, PgsqlError
from esc.ha.pgsql_service import unfollowed_marker
from esc.ha.provider import NodeProvider, ProviderError
from esc.ha.role_record import ACTIVE, FAULT, STANDBY, STARTING, RoleRecord, write_role

log = logging.getLogger("esc.ha")

CYCLE = 0.1  # seconds between two cycles: the health seen by keepalived is this fresh
# How often a node that is not active, but whose data last ran as a primary, asks
# whether the peer is the primary now (to follow it).
PEER_CHECK_INTERVAL = 2.0

FORCE_HINT = (
    "if the active node is lost for good and losing what it did not replicate is "
    "acceptable, run 'escadm ha force-active --discard-unreplicated' on this node"
)


class RoleManager:
    def __init__(
        self,
        home: NodeHome,
        settings: Settings,
        controller: Controller,
        cluster: Cluster,
        provider: NodeProvider | None,
        restart_pgsql: Callable[[], None],
    ) -> None:
        self.home = home
        self.settings = settings
        self.ha = settings.ha
        self.controller = controller
        self.cluster = cluster
        self.provider = provider
        self._restart_pgsql = restart_pgsql
        self.paths = KeepalivedPaths.under(home.run)
        # The role manager's own track file: fault in FAULT and while handing over (the
        # node's services are the health loop's, in another file).
        self.role_track = TrackFile(self.paths.role_file)
        self.role = STARTING
        self.reason = "starting"
        self._peer_marked_outdated = False
        self._peer_checked_at = 0.0
        self._switching = False
        self._forced = False
        self._writes_waiting_logged = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._record(STARTING, "starting: the node's services come up")

    # life ---------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._events, name="ha-events", daemon=True),
            threading.Thread(target=self._cycles, name="ha-cycle", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """At the node's stop: an active hands the role over to an in-sync standby
        first, as in a switchover, so the peer takes over without fencing this node."""
        if self.role == ACTIVE:
            try:
                self.switchover(follow=False)  # the node stops: its PostgreSQL follows later
            except (Conflict, PgsqlError) as exc:
                log.warning("stopping without a handover: %s", exc)
        self._stop.set()
        self.role_track.set(False)  # keepalived hands the VIP on before the engine stops
        for thread in self._threads:
            thread.join(10)

    def _events(self) -> None:
        with NotifyFifo(self.paths.notify_fifo) as fifo:
            while not self._stop.is_set():
                event = fifo.read(CYCLE)
                if event is None or event.instance != INSTANCE:
                    continue
                log.info("keepalived: %s (priority %s)", event.state, event.priority)
                try:
                    self.on_vrrp(event.state)
                except Exception:  # the thread must go on reading
                    log.exception("handling keepalived's %s failed", event.state)

    def _cycles(self) -> None:
        while not self._stop.wait(CYCLE):
            try:
                self.run_cycle()
            except Exception:  # a cycle must never end the loop
                log.exception("HA cycle failed")

    # keepalived's state changes -----------------------------------------------------

    def on_vrrp(self, state: str) -> None:
        if state == "MASTER":
            self.become_active()
        elif state in ("BACKUP", "FAULT", "STOP") and self.role == ACTIVE:
            self.become_standby(f"keepalived went {state}")

    def force_active(self) -> None:
        """The operator's choice on a node in FAULT: take the active role at the next
        MASTER without the witness check, giving up what the lost active did not
        replicate. The old active is still fenced unless it certainly cannot write."""
        with self._lock:
            if self.role == ACTIVE:
                raise Conflict("this node is the active already")
            if self.role != FAULT:
                raise Conflict(
                    f"this node is {self.role}, not FAULT: a standby in good standing takes "
                    "over by itself, and 'escadm switchover' hands the role over"
                )
            self._forced = True
            self.role = STANDBY
            self._record(STANDBY, "forced to take the active role: waiting for the VIP")
            log.warning("the operator forces the active role, discarding unreplicated writes")
        self.role_track.set(True)  # keepalived leaves FAULT: with no MASTER it takes the VIP

    def become_active(self) -> None:
        with self._lock:
            if self.role in (ACTIVE, FAULT):
                return  # FAULT stays until the operator acts
            started = time.monotonic()
            try:
                promote_s = 0.0
                standby = self.cluster.in_recovery()
                # Before anything changes: a schema this release cannot run on is refused
                # while the peer can still keep the role.
                require_runnable(self.controller.db.engine)
                if standby and not self._forced:
                    refusal = self._promotion_refusal()
                    if refusal:
                        self._fault(refusal)
                        return
                self._fence_unless_safe()
                # Without a synchronous standby, commit alone only once the peer is marked
                # outdated; if it cannot be, commits wait for the peer.
                alone = not self._standby_in_sync() and self._mark_peer_outdated(
                    f"the active {self.ha.address} took the role without it"
                )
                if standby:
                    promote_s = self.cluster.promote(synchronous=not alone)
                elif alone:
                    self.cluster.set_synchronous(False)
                self.controller.take_active()
            except (PgsqlError, ProviderError, SchemaTooNew) as exc:
                self._fault(f"could not take the active role: {exc}")
                return
            except SQLAlchemyError as exc:
                # The schema migration that taking the role runs failed (it is rolled
                # back with its transaction): FAULT says so, rather than a node that
                # holds the VIP with no engine.
                cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                self._fault(f"could not take the active role: the database refused: {cause}")
                return
            self.role = ACTIVE
            self._forced = False
            self._record(ACTIVE, "holds the VIP and the active role")
            log.info(
                "active role taken in %.3f s (promotion %.3f s), epoch %s",
                time.monotonic() - started,
                promote_s,
                self.controller.lease.epoch,
            )

    def become_standby(self, why: str) -> None:
        with self._lock:
            left = self.controller.drop_active(timeout=2.0)
            self.role = STANDBY
            self._record(STANDBY, why)
            log.info(
                "active role dropped (%s); left for the new active: %s", why, left or "nothing"
            )
            try:
                if not self.cluster.in_recovery():
                    # Until it follows the new active: no commit without the peer, so not
                    # even a client of the database itself gets a write acknowledged here.
                    self.cluster.set_synchronous(True)
            except PgsqlError as exc:
                # Not answering: its service starts it as a standby (the role record
                # says STANDBY now), so nothing here can make it acknowledge a write.
                log.info("this node's PostgreSQL does not answer (%s): a standby at restart", exc)
        self._peer_checked_at = 0.0  # look for the new active at the next cycle

    def _promotion_refusal(self) -> str | None:
        """Why this standby must not be promoted, None when it may."""
        if self.provider is None:
            if self._handed_over():
                return None
            return (
                "no node provider is configured ([ha] provider), so this standby can "
                "neither learn whether it is outdated nor fence the old active; " + FORCE_HINT
            )
        try:
            outdated = self.provider.outdated(str(self.ha.address))
        except ProviderError as exc:
            return f"cannot read the witness record at the node provider ({exc}); " + FORCE_HINT
        if outdated:
            return f"the active marked this node outdated: {outdated}; " + FORCE_HINT
        return None

    def _handed_over(self) -> bool:
        with self.controller.db.read() as session:
            return handed_over_to(session) == str(self.ha.address)

    def _fence_unless_safe(self) -> None:
        """Fence the peer unless it certainly cannot take a write."""
        if self._handed_over():
            log.info("the old active handed the role over: no fencing needed")
            return
        state = replication.peer_state(self.cluster)
        if state in (replication.PEER_STANDBY, replication.PEER_DOWN):
            log.info("the peer %s's PostgreSQL is %s: no fencing needed", self.ha.peer, state)
            return
        if self.provider is None:
            raise ProviderError(
                f"the peer {self.ha.peer} is {state} and may still be active, and no node "
                "provider is configured to fence it"
            )
        started = time.monotonic()
        self.provider.fence(str(self.ha.peer))
        log.info(
            "the peer %s (%s) fenced in %.3f s", self.ha.peer, state, time.monotonic() - started
        )

    def _standby_in_sync(self) -> bool:
        """Whether this node, as a primary, has its peer streaming synchronously now."""
        if self.cluster.in_recovery():
            return False
        status = replication.read_status(self.cluster)
        return status.connected and status.peer.sync_state == "sync"

    def _mark_peer_outdated(self, reason: str) -> bool:
        """Mark the peer outdated before this node commits without it; False when it
        cannot be marked (then commits must keep waiting for it)."""
        if self.provider is None:
            return False
        try:
            self.provider.mark_outdated(str(self.ha.peer), reason)
        except ProviderError as exc:
            log.error("cannot mark the peer %s outdated: %s", self.ha.peer, exc)
            return False
        self._peer_marked_outdated = True
        return True

    # planned switchover --------------------------------------------------------------

    def _require_active_in_sync(self, action: str, then: str) -> None:
        """Conflict unless this node is the active and its standby UpToDate and
        synchronous: what a switchover and a restore need (under the role lock)."""
        if self.role != ACTIVE:
            raise Conflict(
                f"this node is {self.role}, not the active: run the {action} on the active node"
            )
        status = replication.read_status(self.cluster)
        if not status.uptodate:
            raise Conflict(
                f"the standby {self.ha.peer} is not UpToDate and synchronous "
                f"({replication.not_uptodate_reason(status)}): wait for it with "
                f"'escadm replication status --wait-uptodate'{then}"
            )

    def switchover(self, timeout: float = 15.0, *, follow: bool = True) -> dict[str, Any]:
        """Hand the active role to the standby: no acknowledged write lost (the standby
        is synchronous), transactions in flight resumed there; then, with `follow`, this
        node's PostgreSQL follows the new active. Returns what happened."""
        with self._lock:
            self._require_active_in_sync("switchover", "")
            started = time.monotonic()
            self._switching = True
            lease = self.controller.lease
            assert isinstance(lease, DatabaseLease)
            lease.hand_over(str(self.ha.peer))  # writes refused from here
            left = self.controller.drop_active(timeout=2.0)
            self.role = STANDBY
            self.role_track.set(False)  # FAULT: keepalived's priority-0 advert moves the VIP now
            self._record(STANDBY, f"handed the active role over to {self.ha.peer}")
        try:
            deadline = time.monotonic() + timeout
            while replication.peer_state(self.cluster) != replication.PEER_PRIMARY:
                if time.monotonic() > deadline:
                    raise Conflict(
                        f"the standby {self.ha.peer} did not take the active role within "
                        f"{timeout:g} s: see its log (escadm status on it)"
                    )
                time.sleep(0.02)
            taken_s = time.monotonic() - started
            log.info("switchover: %s is the active after %.3f s", self.ha.peer, taken_s)
            if follow:
                self._follow_peer()
            else:
                self._record(STANDBY, f"handed over to {self.ha.peer}", active=str(self.ha.peer))
        finally:
            self._switching = False
        return {
            "from": str(self.ha.address),
            "to": str(self.ha.peer),
            "seconds": taken_s,
            "left_in_flight": left,
        }

    # a restore ----------------------------------------------------------------------

    def check_restore(self) -> None:
        """Conflict unless a restore may start on this node now: the active, its standby
        UpToDate and synchronous (swap_in_restore asks it again at the swap)."""
        with self._lock:
            self._require_active_in_sync("restore", ", then restore again")

    def swap_in_restore(self, token: str) -> dict[str, Any]:
        """The last step of `escadm restore` on the active: the aside schema it built and
        checked (marked by `token`) replaces the data, and the engine resumes on it.

        The node keeps the VIP and its role throughout: only the engine pauses (its
        lease released, so writes are refused meanwhile), while the API and PostgreSQL
        go on answering, which is all the health keepalived sees asks. Retaking the role
        in this process, rather than restarting escmanager, is what keeps it so: a
        stopped escmanager fails the health check and its stop hands the role over.
        Taking it again does what a start does on the restored data: the epoch moves on
        (from the pair's lease, which the swap keeps), the executors recorded in the
        backup count as gone, so its transactions in flight are resumed or closed at
        once, and VIM instances the restored data does not know are removed."""
        with self._lock:
            self._require_active_in_sync("restore", ", then restore again")
            started = time.monotonic()
            lease = self.controller.lease
            assert isinstance(lease, DatabaseLease)
            lease.paused = "restoring a backup"
            try:
                left = self.controller.drop_active(timeout=2.0)
                try:
                    with self.controller.db.engine.begin() as connection:
                        swap_in(connection, token, keep_lease=True)
                except AsideError as exc:
                    raise Conflict(f"{exc}; nothing was changed") from None
                except SQLAlchemyError as exc:  # rolled back: the data is as it was
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    raise Conflict(f"the swap failed ({first}); nothing was changed") from None
                finally:
                    # On the restored data, or on the old after a failed swap.
                    self._retake_after_restore()
            finally:
                lease.paused = None
            seconds = time.monotonic() - started
            log.info(
                "restored data swapped in; active role taken again in %.3f s, epoch %s",
                seconds,
                lease.epoch,
            )
            return {
                "node": self.settings.node.name,
                "standby": str(self.ha.peer),
                "epoch": lease.epoch,
                "seconds": seconds,
                "interrupted": left,
            }

    def _retake_after_restore(self) -> None:
        try:
            self.controller.take_active()
        except Exception as exc:
            # An active without its engine must not keep the VIP: the standby, which has
            # the same data, takes over (and the role) instead.
            log.exception("taking the active role again after a restore failed")
            self._fault(f"could not take the active role again after a restore: {exc}")
            raise Unavailable(
                f"node {self.settings.node.name} could not take the active role again after "
                f"the swap ({exc}): it went FAULT, and the standby {self.ha.peer}, which has "
                "the same data, takes over; see log/escmanager.log"
            ) from None
        self._record(ACTIVE, "holds the VIP and the active role")

    # the cycle ----------------------------------------------------------------------

    def run_cycle(self) -> None:
        try:
            if self.role == ACTIVE:  # a primary's status is read locally
                self._keep_replication(replication.read_status(self.cluster))
            else:
                if self.role == STARTING and self.cluster.in_recovery():
                    self.role = STANDBY
                    self._record(STANDBY, "a standby of the pair")
                self._follow_when_peer_active()
        except PgsqlError as exc:
            self.role_track.set(False)
            if self.role == STARTING:
                self.reason = f"waiting for PostgreSQL: {exc}"
            return
        self.role_track.set(self.role != FAULT and not self._switching)

    def _follow_when_peer_active(self) -> None:
        """A node that is not active but whose data last ran as a primary (an old active
        after a failover or a switchover, or a cold start of both) follows the peer once
        the peer is the primary: its pgsql service rewinds it (or re-clones it)."""
        now = time.monotonic()
        if now - self._peer_checked_at < PEER_CHECK_INTERVAL:
            return
        self._peer_checked_at = now
        primary = not self.cluster.in_recovery()
        if not primary and not unfollowed_marker(self.cluster).exists():
            return
        if replication.peer_state(self.cluster) == replication.PEER_PRIMARY:
            self._follow_peer()

    def _follow_peer(self) -> None:
        log.info("the peer %s is the active: this node's PostgreSQL follows it", self.ha.peer)
        following = f"following the active {self.ha.peer}"
        if self.role == FAULT:  # what the operator must act on stays the reason
            following = f"{self.reason.split('; following')[0]}; {following}"
        self._record(self.role, following, active=str(self.ha.peer))
        self._restart_pgsql()

    def _keep_replication(self, status: replication.ReplicationStatus) -> None:
        streaming = status.connected and status.peer.state == "streaming"
        synchronous = bool(status.synchronous_standby_names)
        if streaming:
            if not synchronous:
                self.cluster.set_synchronous(True)
                log.info("standby %s streams again: replication is synchronous", self.ha.peer)
            elif self._peer_marked_outdated and status.peer.sync_state == "sync":
                self._clear_outdated()
            self._writes_waiting_logged = False
            return
        if not synchronous:
            return  # asynchronous already, the standby marked outdated
        # The standby is lost and every commit now waits for it.
        if not self._mark_peer_outdated(f"lost by the active {self.ha.address}"):
            self._log_writes_waiting("it cannot be marked outdated at a node provider")
            return
        self.cluster.set_synchronous(False)
        log.warning(
            "standby %s lost: marked outdated at the node provider, commits no longer wait",
            self.ha.peer,
        )

    def _clear_outdated(self) -> None:
        assert self.provider is not None
        try:
            self.provider.clear_outdated(str(self.ha.peer))
        except ProviderError as exc:
            log.warning("clearing standby %s's outdated mark failed: %s", self.ha.peer, exc)
            return
        self._peer_marked_outdated = False
        log.info("standby %s is in sync again: its outdated mark cleared", self.ha.peer)

    def _log_writes_waiting(self, why: str) -> None:
        if not self._writes_waiting_logged:
            self._writes_waiting_logged = True
            log.error(
                "standby %s lost and %s: writes wait for it rather than being acknowledged "
                "unsafely",
                self.ha.peer,
                why,
            )

    # the role record ----------------------------------------------------------------

    def _fault(self, reason: str) -> None:
        self.role = FAULT
        self.role_track.set(False)  # keepalived hands the VIP on
        self._record(FAULT, reason)
        log.error("FAULT: %s", reason)

    def _record(self, role: str, reason: str, active: str | None = None) -> None:
        """The role record the node's services and `escadm status` read; `active` names
        the peer when it is known to be the active (the pgsql service follows it)."""
        self.reason = reason
        write_role(
            self.home,
            RoleRecord.now(
                role=role,
                reason=reason,
                epoch=self.controller.lease.epoch if role == ACTIVE else None,
                peer=str(self.ha.peer),
                active=str(self.ha.address) if role == ACTIVE else active,
            ),
        )

    def status(self) -> dict[str, Any]:
        return {"role": self.role, "reason": self.reason}
