"""The mona service: `python -m esc.monitor.service --home H` (run by the supervisor)."""

from __future__ import annotations

import signal
import threading

from esc.config import NodeHome
from esc.db.session import Database
from esc.ha.role_record import ACTIVE, read_role
from esc.monitor.mona import run_mona
from esc.node.logs import service_home


def not_active(home: NodeHome) -> str | None:
    """Why a node of a pair does not monitor now: MONA runs on the active node only."""
    record = read_role(home)
    if record is not None and record.role == ACTIVE:
        return None
    role = record.role if record else "starting"
    return f"this node is {role}, not the pair's active: MONA runs on the active node"


def main() -> int:
    home = service_home("mona", "ESC mona service (monitoring and recovery)")
    settings = home.load()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    db = Database(home.database_url(settings), pool_size=5, max_overflow=5)
    held_off = (lambda: not_active(home)) if settings.ha.enabled else None
    try:
        run_mona(db, settings.monitor, home.run, stop, held_off)
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
