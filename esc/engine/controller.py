"""The controller of one node: its database, VIM, API side and active role.

The REST API and the CLI's `escadm run` hold one Controller. Its API side
is always on: reads, health, authentication, and every northbound write
through the service layer, `controller.northbound` (esc.engine.northbound),
which holds the writes' rules. The active role (esc.engine.active_role:
executor, notifier, schema migration) runs only while this node holds it:
a standalone node takes it at start; a node of a pair when it becomes the
active one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from esc.config import NodeHome, Settings
from esc.db.migrate import Migration
from esc.db.models import User
from esc.db.session import Database
from esc.engine.active_role import ActiveRole
from esc.engine.lease import DatabaseLease, StandaloneLease
from esc.engine.northbound import Northbound
from esc.engine.vims import Vims
from esc.health import CheckResult, check_database, check_services, check_vim
from esc.security import VerifiedCache
from esc.vim.base import VimDriver

log = logging.getLogger(__name__)

STAGE_INIT = "INIT"
STAGE_READY = "READY"


class Controller:
    def __init__(
        self,
        home: NodeHome,
        settings: Settings,
        lease_for: Callable[[Database], StandaloneLease] | None = None,
    ) -> None:
        """`lease_for` makes the lease of a node of a pair on this controller's database;
        without it the node is standalone and always holds the role."""
        self.home = home
        self.settings = settings
        self.db = Database(home.database_url(settings))
        self.vims = Vims(home, settings, self.db)
        self.lease = lease_for(self.db) if lease_for else StandaloneLease()
        if isinstance(self.lease, DatabaseLease):
            self.lease.on_lost = self._role_lost
        self.active: ActiveRole | None = None
        # The last schema migration this process ran on taking the active role (kept
        # once the role is dropped, so a node reports what its last takeover cost).
        self.last_migration: Migration | None = None
        self._role_lock = threading.Lock()
        self.northbound = Northbound(self.db, self.vims, settings, self._enqueue, self.lease)
        # The role manager of a node of a pair (esc.ha.roles), None when standalone:
        # it decides when this node takes and drops the active role.
        self.ha: Any = None
        self.stage = STAGE_INIT
        self._credentials = VerifiedCache()

    @property
    def vim(self) -> VimDriver:
        """The node's own VIM ([vim] of esc.toml), the default connection."""
        return self.vims.default

    @property
    def standalone(self) -> bool:
        return not self.settings.ha.enabled

    def start(self) -> None:
        """Standalone: the node holds the active role from its start. A node of a pair
        starts its API side only; its role manager decides on the active role."""
        if self.standalone:
            self.take_active()
        self.stage = STAGE_READY
        log.info("controller ready (database %s, VIM %s)", self.db.display_url, self.vim.name)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop gracefully; returns transactions left for reconciliation at next start."""
        self.stage = STAGE_INIT
        if self.ha is not None:
            self.ha.stop()  # an active hands its role over before the engine stops
        left = self.drop_active(timeout)
        self.db.dispose()
        if left:
            log.warning("stopped with transactions in progress, resumed at next start: %s", left)
        return left

    # the active role ------------------------------------------------------------

    def take_active(self) -> None:
        with self._role_lock:
            if self.active is not None:
                return
            role = ActiveRole(self.db, self.vims, self.settings, self.lease)
            role.take()
            self.active = role
            if role.migration is not None:
                self.last_migration = role.migration

    def drop_active(self, timeout: float) -> list[str]:
        with self._role_lock:
            role, self.active = self.active, None
        return role.drop(timeout) if role is not None else []

    def _role_lost(self) -> None:
        """Another node took the role: stop the executor and notifier (their writes are
        refused already), in a thread of its own since the lease's thread tells us."""
        log.warning("this node lost the active role: its engine stops")
        threading.Thread(target=self.drop_active, args=(5.0,), name="role-lost").start()

    def _enqueue(self, tx_id: str) -> None:
        role = self.active
        if role is not None:  # otherwise the next holder's pick-up finds it QUEUED
            role.executor.enqueue(tx_id)

    def health_checks(self) -> list[CheckResult]:
        """The checks this process can answer for: its database, VIM, engine and notifier
        threads, and the node's other services (from their records under run/)."""
        role = self.active
        standby = role is None and not self.standalone
        results = [check_database(self.db, standby=standby), check_vim(self.vim)]
        if role is None:
            # A standby's engine runs on the active; a standalone node always holds it.
            results.append(
                CheckResult(
                    "engine",
                    not self.standalone,
                    "this node does not hold the active role"
                    + ("" if self.standalone else ": it runs on the pair's active node"),
                )
            )
        else:
            workers = role.executor.workers
            results.append(
                CheckResult("engine", role.executor.alive(), f"{workers} transaction workers")
            )
            results.append(CheckResult("notifier", role.notifier.alive(), "event delivery"))
        if (self.home.run / "supervisor.json").exists():  # supervised: the others too
            results += [
                r
                for r in check_services(self.home, self.settings.ha.enabled)
                if r.name != "escmanager"
            ]
        return results

    def health(self) -> tuple[bool, list[CheckResult]]:
        """(serving with every check passing, the checks): what GET /esc/health says."""
        checks = self.health_checks()
        return self.stage == STAGE_READY and all(c.ok for c in checks), checks

    # authentication ------------------------------------------------------------

    def authenticate(self, user: str, password: str) -> bool:
        return self._credentials.check(user, password, self._password_hash)

    def _password_hash(self, user: str) -> str | None:
        with self.db.read() as session:
            return session.scalar(select(User.password_hash).where(User.name == user))
