"""The northbound service layer: every write a client can ask for, and its rules.

The REST API's write handlers only translate HTTP to a call here and the
result back; each method here opens one database write, checks first that
the node takes writes (`require_writable`, inside that same transaction so
a switch to MAINTENANCE cannot slip in between the check and the write),
applies the request's rules and commits. A new kind of write added here
gets the check, and its Idempotency-Key kept with it (esc.engine.idempotency),
by using `_apply`; one that forgets it fails the tests that try every write
route in MAINTENANCE and retried with a key.

Work that may wait on the network (the VIM's image and flavor checks) or
burns CPU (parsing an upload) runs before the write opens: on SQLite a
write holds the database's one write lock, so every other write would
queue behind it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from esc.config import Settings
from esc.db.models import (
    CustomScript,
    Deployment,
    Subscription,
    Tenant,
    Transaction,
    VimConnection,
)
from esc.db.session import Database
from esc.descriptor import Descriptor
from esc.engine import callbacks, idempotency, op_mode, orphans, submit
from esc.engine.lease import StandaloneLease
from esc.engine.vims import Vims
from esc.errors import Conflict, EscError, InvalidRequest, NotFound
from esc.logtags import transaction_context
from esc.monitor import mode, scripts
from esc.monitor.mappings import parse_mappings, replace_mappings
from esc.vim.base import VimError

log = logging.getLogger(__name__)

T = TypeVar("T")


def require_writable(session: Session, lease: StandaloneLease) -> None:
    """Refuse a northbound write this node must not take now (503): when it does not
    hold the active role (a standby names the active), or in MAINTENANCE.

    The one place that decides whether this node accepts writes.
    """
    lease.check(session)
    op_mode.require_operation(session)


class Northbound:
    """The writes of one controller: tenants, deployments, VM actions, subscriptions,
    dynamic mappings, custom scripts, the monitoring mode and the op_mode."""

    def __init__(
        self,
        db: Database,
        vims: Vims,
        settings: Settings,
        enqueue: Callable[[str], None],
        lease: StandaloneLease | None = None,
    ) -> None:
        self.db = db
        self.lease = lease or StandaloneLease()
        self.vims = vims
        self.settings = settings
        self._enqueue = enqueue
        self._keyed: tuple[idempotency.KeyedRequest, Callable[[Any], idempotency.Answer]] | None
        self._keyed = None

    def keyed(
        self, request: idempotency.KeyedRequest | None, render: Callable[[Any], idempotency.Answer]
    ) -> Northbound:
        """These writes for a request sent with an Idempotency-Key: done once, answered
        as `render` answers the write's result, and that answer given again to a retry
        (idempotency.Replayed). Without a key (None): this object, unchanged."""
        if request is None:
            return self
        view = copy.copy(self)
        view._keyed = (request, render)
        return view

    def _apply(
        self, change: Callable[[Session], T], check: Callable[[Session], None] | None = None
    ) -> T:
        """One write: `change` in a write transaction once `check` (by default
        require_writable) lets it, and, for a keyed request, the answer it gets
        committed with it, or the first answer replayed (idempotency.Replayed).

        A replay is answered before the op_mode check: it changes nothing, so a retry
        whose first attempt was done gets that answer in MAINTENANCE too. Not before
        the active-role check: a node that does not hold the role may not have this
        release's schema yet (a standby of an older primary, a node migrating it as it
        takes the role), and the holder answers the retry."""
        checked = check or (lambda session: require_writable(session, self.lease))
        if self._keyed is None:
            with self.db.write() as session:
                checked(session)
                return change(session)
        request, render = self._keyed
        try:
            with self.db.write() as session:
                self.lease.check(session)
                idempotency.replay_if_done(session, request)
                checked(session)
                result = change(session)
                session.flush()
                idempotency.record(session, request, render(result))
                return result
        except (IntegrityError, EscError):
            # The same request twice at once (a client's retry racing its first
            # attempt, each finding no key): the one committed first answers both,
            # whatever the other met on its way (the key's row taken, a rule refusing
            # what the first did: a duplicate name, a deleted row).
            self._replay_early()
            raise

    def _replay_early(self) -> None:
        """Answer a retry before work done ahead of the write (a VIM's checks), which
        the first attempt did already; only on the holder of the active role (see
        _apply: elsewhere the write's own check refuses it)."""
        if self._keyed is not None and self.lease.held():
            with self.db.read() as session:
                idempotency.replay_if_done(session, self._keyed[0])

    def _require_writable(self) -> None:
        """Refuse as a write would (MAINTENANCE, not the active node), for an action
        that changes the VIM and no row."""
        with self.db.write() as session:
            require_writable(session, self.lease)

    # tenants ---------------------------------------------------------------------

    def create_tenant(self, name: str) -> Tenant:
        def create(session: Session) -> Tenant:
            tenant = Tenant(name=name)
            session.add(tenant)
            session.flush()
            return tenant

        try:
            return self._apply(create)
        except IntegrityError:
            raise Conflict(f"tenant {name!r} already exists") from None

    def delete_tenant(self, name: str) -> None:
        def delete(session: Session) -> None:
            tenant = session.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is None:
                raise NotFound(f"no tenant {name!r}")
            if tenant.deployments:
                raise Conflict(
                    f"tenant {name!r} still has {len(tenant.deployments)} deployment(s); "
                    "undeploy them first"
                )
            session.delete(tenant)

        self._apply(delete)

    # deployments and VMs: each a transaction the executor runs after the commit ---

    def _submit(self, make: Callable[[Session], Transaction]) -> Transaction:
        tx = self._apply(make)
        with transaction_context(tx.id):
            log.info(
                "accepted %s %s/%s",
                tx.operation.value,
                tx.tenant,
                tx.deployment_name,
                extra={"tags": tx.operation.value.lower()},
            )
        self._enqueue(tx.id)
        return tx

    def deploy(self, descriptor: Descriptor) -> Transaction:
        limit = self.settings.limits.max_vms_per_deployment
        self._replay_early()
        submit.validate_on_vim(self.vims, descriptor.deployment)
        return self._submit(lambda s: submit.submit_deploy(s, descriptor, limit))

    def update(self, tenant: str, name: str, descriptor: Descriptor) -> Transaction:
        limit = self.settings.limits.max_vms_per_deployment
        self._replay_early()
        submit.validate_on_vim(self.vims, descriptor.deployment)
        return self._submit(lambda s: submit.submit_update(s, tenant, name, descriptor, limit))

    def undeploy(self, tenant: str, name: str) -> Transaction:
        return self._submit(lambda s: submit.submit_undeploy(s, tenant, name))

    def scale(self, tenant: str, name: str, vm_group: str, count: int) -> Transaction:
        return self._submit(lambda s: submit.submit_scale(s, tenant, name, vm_group, count))

    def vm_action(self, vm_id: str, action: str) -> Transaction:
        return self._submit(lambda s: submit.submit_vm_action(s, vm_id, action))

    # VIM connections ---------------------------------------------------------------

    def add_vim(self, name: str, driver: str, section: dict[str, Any]) -> VimConnection:
        """A new connection, once its VIM has answered with its credentials (checked
        before the write: that waits on the VIM's network)."""
        self._replay_early()
        try:
            stored = self.vims.checked(name, driver, section)
        except VimError as exc:
            raise InvalidRequest(f"VIM connection {name!r} not added: {exc}") from None

        def add(session: Session) -> VimConnection:
            row = VimConnection(name=name, driver=driver, settings=stored)
            session.add(row)
            session.flush()
            return row

        try:
            return self._apply(add)
        except IntegrityError:
            raise Conflict(
                f"VIM connection {name!r} exists already: remove it first, or choose another name"
            ) from None

    def remove_vim(self, name: str) -> None:
        def remove(session: Session) -> None:
            row = session.get(VimConnection, name)
            if row is None:
                raise NotFound(f"no VIM connection {name!r}: see escadm vim list")
            users = list(
                session.scalars(
                    select(Deployment.name).where(Deployment.vim == name).order_by(Deployment.name)
                )
            )
            if users:
                raise Conflict(
                    f"VIM connection {name!r} is used by {len(users)} deployment(s) "
                    f"({', '.join(users)}): undeploy them first"
                )
            session.delete(row)

        self._apply(remove)
        self.vims.forget(name)

    def delete_orphan(self, vim: str, vm_id: str) -> None:
        """Delete an orphan the operator has looked at (never done automatically)."""
        self._replay_early()
        self._require_writable()
        orphans.delete_orphan(self.db, self.vims, vim, vm_id)
        if self._keyed is not None:
            # A VIM's delete is in no database transaction: its key is committed just
            # after it. A retry whose answer was lost between the two is told 404 (the
            # orphan is gone), which is what happened.
            self._apply(lambda _session: None)

    # event subscriptions ---------------------------------------------------------

    def subscribe(
        self, callback_url: str, tenant: str | None, ca_bundle: str | None = None
    ) -> Subscription:
        # Before the write: resolving the callback's host name may wait on DNS.
        self._replay_early()
        callbacks.check_callback(callback_url, self.settings.notifications)

        def add(session: Session) -> Subscription:
            sub = Subscription(callback_url=callback_url, tenant=tenant, ca_bundle=ca_bundle)
            session.add(sub)
            session.flush()
            return sub

        return self._apply(add)

    def unsubscribe(self, sub_id: str) -> None:
        def remove(session: Session) -> None:
            sub = session.get(Subscription, sub_id)
            if sub is None:
                raise NotFound(f"no subscription {sub_id}")
            session.delete(sub)

        self._apply(remove)

    # monitoring ------------------------------------------------------------------

    def import_mappings(self, document: bytes) -> dict[str, int]:
        """Replace the dynamic mappings with an XML document's; refused whole if invalid."""
        mappings = parse_mappings(document)

        def replace(session: Session) -> dict[str, int]:
            replace_mappings(session, mappings)
            return {
                "actions": sum(m.kind == "action" for m in mappings),
                "metrics": sum(m.kind == "metric" for m in mappings),
            }

        return self._apply(replace)

    def set_monitoring(self, wanted: mode.MonitorMode) -> mode.MonitorMode:
        return self._apply(lambda session: mode.set_mode(session, wanted))

    def put_script(self, name: str, content: str, timeout: float) -> CustomScript:
        return self._apply(lambda session: scripts.put_script(session, name, content, timeout))

    def delete_script(self, name: str) -> None:
        self._apply(lambda session: scripts.delete_script(session, name))

    # the op_mode -------------------------------------------------------------------

    def set_op_mode(self, wanted: op_mode.OpMode, *, ipt_check: bool = False) -> op_mode.OpMode:
        """The one write taken in MAINTENANCE: without it an operator could not leave it.
        Only the active node takes it (the mode is a row the standby replicates)."""
        return self._apply(
            lambda session: op_mode.set_mode(session, wanted, ipt_check=ipt_check),
            check=self.lease.check,
        )
