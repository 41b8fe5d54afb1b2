"""Every fact about this node an upgrade's checks read, in one answer (GET /esc/node).

Each fact is read on its own: one that cannot be read (the database or PostgreSQL not
answering) carries why, and the others are still told. The orchestrator of an upgrade
reaches a node only through its API, so nothing here may fail the whole answer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import func, select

from esc.api.node_schemas import (
    DiskFact,
    HealthFact,
    NodeView,
    OpModeFact,
    ReplicationFact,
    SchemaFact,
    TransactionsFact,
    VipFact,
)
from esc.db.models import Transaction, TransactionState
from esc.engine import op_mode
from esc.engine.controller import Controller
from esc.version import CURRENT

STANDALONE = "STANDALONE"
T = TypeVar("T")


def _read(read: Callable[[], T], unreadable: Callable[[str], T]) -> T:
    """The fact `read` returns, else `unreadable(why)`: whatever a database driver, the
    file system or PostgreSQL raise, the fact is reported unreadable, never a 500."""
    try:
        return read()
    except Exception as exc:
        return unreadable(f"{type(exc).__name__}: {exc}".strip().splitlines()[0])


def node_facts(controller: Controller) -> NodeView:
    settings = controller.settings
    ha = settings.ha
    manager = controller.ha
    passed, checks = controller.health()
    return NodeView(
        node=settings.node.name,
        address=str(ha.address) if ha.enabled else settings.api.host,
        version=str(CURRENT),
        role=manager.role if manager is not None else STANDALONE,
        role_reason=manager.reason if manager is not None else "not one of an HA pair",
        health=HealthFact(passed=passed, checks=[c.as_dict() for c in checks]),
        schema=_schema(controller),
        replication=_replication(controller) if manager is not None else None,
        op_mode=_read(
            lambda: OpModeFact(mode=_op_mode(controller)),
            lambda why: OpModeFact(mode=None, error=why),
        ),
        transactions=_read(
            lambda: _transactions(controller),
            lambda why: TransactionsFact(queued=None, in_progress=None, error=why),
        ),
        disk=_read(
            lambda: DiskFact(
                path=str(controller.home.root),
                free_bytes=shutil.disk_usage(controller.home.root).free,
            ),
            lambda why: DiskFact(path=str(controller.home.root), free_bytes=None, error=why),
        ),
        vip=_vip(controller) if ha.enabled and ha.kad_vip is not None else None,
    )


def _schema(controller: Controller) -> SchemaFact:
    from esc.db.migrate import current_revision, head_revision

    head = head_revision()
    ran = controller.last_migration.as_dict() if controller.last_migration else None
    return _read(
        lambda: SchemaFact(
            revision=current_revision(controller.db.engine), head=head, last_migration=ran
        ),
        lambda why: SchemaFact(revision=None, head=head, error=why),
    )


def _op_mode(controller: Controller) -> str:
    with controller.db.read() as session:
        return op_mode.current(session).value


def _transactions(controller: Controller) -> TransactionsFact:
    open_states = (TransactionState.QUEUED, TransactionState.IN_PROGRESS)
    with controller.db.read() as session:
        counts = dict(
            session.execute(
                select(Transaction.state, func.count())
                .where(Transaction.state.in_(open_states))
                .group_by(Transaction.state)
            ).all()
        )
    return TransactionsFact(
        queued=counts.get(TransactionState.QUEUED, 0),
        in_progress=counts.get(TransactionState.IN_PROGRESS, 0),
    )


def _replication(controller: Controller) -> ReplicationFact:
    from esc.ha import replication

    def unreadable(why: str) -> ReplicationFact:
        return ReplicationFact(
            role=None,
            disk=None,
            connected=None,
            uptodate=None,
            wal_lsn=None,
            synchronous_standby_names=None,
            peer=None,
            error=why,
        )

    return _read(
        lambda: ReplicationFact(**replication.read_status(controller.ha.cluster).as_json()),
        unreadable,
    )


def _vip(controller: Controller) -> VipFact:
    from esc.ha.node_services import holds_vip

    ha = controller.settings.ha
    return VipFact(address=str(ha.kad_vip.ip), interface=ha.kad_vif, held=holds_vip(ha))
