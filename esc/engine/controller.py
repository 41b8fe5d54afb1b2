"""The controller: database, VIM, transaction executor and notifier of one node.

The REST API and the CLI's `escadm run` hold one Controller; every
northbound write goes through it, so a request is validated, persisted as
a transaction and queued in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.config import NodeHome, Settings
from esc.db.migrate import upgrade_to_head
from esc.db.models import Transaction, User
from esc.db.session import Database
from esc.descriptor import Descriptor
from esc.engine import op_mode, submit
from esc.engine.executor import Executor
from esc.engine.notifier import Notifier
from esc.health import CheckResult, check_database, check_services, check_vim
from esc.logtags import transaction_context
from esc.monitor.mappings import install_defaults_if_empty
from esc.security import VerifiedCache
from esc.vim.base import load_driver

log = logging.getLogger(__name__)

STAGE_INIT = "INIT"
STAGE_READY = "READY"


class Controller:
    def __init__(self, home: NodeHome, settings: Settings) -> None:
        self.home = home
        self.settings = settings
        self.db = Database(home.database_url(settings))
        self.vim = load_driver(settings.vim.driver, home.vim_location(settings))
        self.executor = Executor(
            self.db, self.vim, settings.engine.workers, settings.engine.max_resumes
        )
        self.notifier = Notifier(self.db, settings.notifications)
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

    # northbound writes ---------------------------------------------------------

    def _submit(self, make: Callable[[Session], Transaction]) -> Transaction:
        with self.db.write() as session:
            op_mode.require_operation(session)
            tx = make(session)
        with transaction_context(tx.id):
            log.info(
                "accepted %s %s/%s",
                tx.operation.value,
                tx.tenant,
                tx.deployment_name,
                extra={"tags": tx.operation.value.lower()},
            )
        self.executor.enqueue(tx.id)
        return tx

    def deploy(self, descriptor: Descriptor) -> Transaction:
        limit = self.settings.limits.max_vms_per_deployment
        return self._submit(lambda s: submit.submit_deploy(s, self.vim, descriptor, limit))

    def undeploy(self, tenant: str, name: str) -> Transaction:
        return self._submit(lambda s: submit.submit_undeploy(s, tenant, name))

    def update(self, tenant: str, name: str, descriptor: Descriptor) -> Transaction:
        limit = self.settings.limits.max_vms_per_deployment
        return self._submit(
            lambda s: submit.submit_update(s, self.vim, tenant, name, descriptor, limit)
        )

    def scale(self, tenant: str, name: str, vm_group: str, count: int) -> Transaction:
        return self._submit(lambda s: submit.submit_scale(s, tenant, name, vm_group, count))

    def vm_action(self, vm_id: str, action: str) -> Transaction:
        return self._submit(lambda s: submit.submit_vm_action(s, vm_id, action))
