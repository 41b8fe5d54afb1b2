"""Whether monitoring runs: `escadm monitor start | stop`.

A row in the database, like op_mode, so a stop outlives a restart, a
restore and a switchover: monitoring an operator stopped stays stopped
until they start it again. MONA reads it at every refresh.
"""

from __future__ import annotations

import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.db.models import ControllerSetting

MONITORING = "monitoring"


class MonitorMode(enum.StrEnum):
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"


def current(session: Session) -> MonitorMode:
    value = session.scalar(
        select(ControllerSetting.value).where(ControllerSetting.name == MONITORING)
    )
    return MonitorMode(value) if value else MonitorMode.RUNNING


def set_mode(session: Session, mode: MonitorMode) -> MonitorMode:
    row = session.get(ControllerSetting, MONITORING, with_for_update=True)
    if row is None:
        session.add(ControllerSetting(name=MONITORING, value=mode.value))
    else:
        row.value = mode.value
    return mode
