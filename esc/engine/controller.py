"""The controller: database, VIM, transaction executor and notifier of one node.

The REST API and the CLI's `escadm run` hold one Controller. It owns the
node's parts and their life (start, stop, health, authentication); every
northbound write goes through its service layer, `controller.northbound`
(esc.engine.northbound), which holds the writes' rules.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from esc.config import NodeHome, Settings
from esc.db.migrate import upgrade_to_head
from esc.db.models import User
from esc.db.session import Database
from esc.engine.executor import Executor
from esc.engine.northbound import Northbound
from esc.engine.notifier import Notifier
from esc.engine.step_vim import RetryPolicy
from esc.health import CheckResult, check_database, check_services, check_vim
from esc.monitor.mappings import install_defaults_if_empty
from esc.security import VerifiedCache
from esc.vim.base import driver_for

log = logging.getLogger(__name__)

STAGE_INIT = "INIT"
STAGE_READY = "READY"


class Controller:
    def __init__(self, home: NodeHome, settings: Settings) -> None:
        self.home = home
        self.settings = settings
        self.db = Database(home.database_url(settings))
        self.vim = driver_for(home, settings)
        self.executor = Executor(
            self.db,
            self.vim,
            settings.engine.workers,
            settings.engine.max_resumes,
            node=settings.node.name,
            retry=RetryPolicy.of(settings.engine),
        )
        self.notifier = Notifier(self.db, settings.notifications)
        self.northbound = Northbound(self.db, self.vim, settings, self.executor.enqueue)
        self.stage = STAGE_INIT
        self._credentials = VerifiedCache()

    def start(self) -> None:
        upgrade_to_head(self.db.engine)
        self.vim.recover()
        with self.db.write() as session:
            if install_defaults_if_empty(session):
                log.info("default dynamic mappings installed")
        self.executor.start()
        self.notifier.start()
        self.stage = STAGE_READY
        log.info("controller ready (database %s, VIM %s)", self.db.display_url, self.vim.name)

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Stop gracefully; returns transactions left for reconciliation at next start."""
        self.stage = STAGE_INIT
        left = self.executor.stop(timeout)
        self.notifier.stop()
        self.db.dispose()
        if left:
            log.warning("stopped with transactions in progress, resumed at next start: %s", left)
        return left

    def health_checks(self) -> list[CheckResult]:
        """The checks this process can answer for: its database, VIM, engine and notifier
        threads, and the node's other services (from their records under run/)."""
        results = [check_database(self.db), check_vim(self.vim)]
        results.append(
            CheckResult(
                "engine", self.executor.alive(), f"{self.executor.workers} transaction workers"
            )
        )
        results.append(CheckResult("notifier", self.notifier.alive(), "event delivery"))
        if (self.home.run / "supervisor.json").exists():  # supervised: the others too
            results += [r for r in check_services(self.home) if r.name != "escmanager"]
        return results

    # authentication ------------------------------------------------------------

    def authenticate(self, user: str, password: str) -> bool:
        return self._credentials.check(user, password, self._password_hash)

    def _password_hash(self, user: str) -> str | None:
        with self.db.read() as session:
            return session.scalar(select(User.password_hash).where(User.name == user))
