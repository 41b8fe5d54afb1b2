"""The controller's operation mode: OPERATION, or MAINTENANCE.

In MAINTENANCE new northbound writes are refused as temporarily unavailable
(reads still work) while transactions already in flight run to their end,
so an upgrade can wait for `ip_trans` to drain. The mode is a row in the
database, so it persists across restart, restore and switchover.

Setting the mode and submitting a write lock the same row, so a write can
never slip in between an `--ipt_check` and the switch to MAINTENANCE.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.db.models import ControllerSetting, Transaction
from esc.errors import Conflict, Unavailable

OP_MODE = "op_mode"


class OpMode(enum.StrEnum):
    OPERATION = "OPERATION"
    MAINTENANCE = "MAINTENANCE"


def _row(session: Session, *, lock: bool, shared: bool = False) -> ControllerSetting | None:
    query = select(ControllerSetting).where(ControllerSetting.name == OP_MODE)
    if lock:
        query = query.with_for_update(read=shared)
    return session.scalar(query)


def current(session: Session) -> OpMode:
    row = _row(session, lock=False)
    return OpMode(row.value) if row else OpMode.OPERATION


def in_flight(session: Session) -> list[Transaction]:
    return list(
        session.scalars(
            select(Transaction)
            .where(Transaction.lock_key.is_not(None))
            .order_by(Transaction.created_at)
        )
    )


def require_operation(session: Session) -> None:
    """Refuse a northbound write in MAINTENANCE (called inside the write's transaction)."""
    row = _row(session, lock=True, shared=True)
    if row is not None and row.value == OpMode.MAINTENANCE:
        raise Unavailable(
            "ESC is in MAINTENANCE mode: northbound writes are temporarily unavailable; "
            "reads still work. Retry when the operator has run "
            "'escadm op_mode set --mode=operation'"
        )


def set_mode(session: Session, mode: OpMode, *, ipt_check: bool = False) -> OpMode:
    """Switch the mode. With ipt_check, refuse MAINTENANCE while transactions are in flight."""
    row = _row(session, lock=True)
    if row is None:
        row = ControllerSetting(name=OP_MODE, value=OpMode.OPERATION.value)
        session.add(row)
        session.flush()
    if mode is OpMode.MAINTENANCE and ipt_check:
        busy = in_flight(session)
        if busy:
            names = ", ".join(
                f"{tx.id} ({tx.operation.value} {tx.tenant}/{tx.deployment_name})" for tx in busy
            )
            raise Conflict(
                f"{len(busy)} transaction(s) in progress: {names}; wait for them "
                "(escadm ip_trans --wait) or set the mode without --ipt_check"
            )
    row.value = mode.value
    return mode
