"""The mona service: `python -m esc.monitor.service --home H` (run by the supervisor)."""

from __future__ import annotations

import signal
import threading

from esc.db.session import Database
from esc.monitor.mona import run_mona
from esc.node.logs import service_home


def main() -> int:
    home = service_home("mona", "ESC mona service (monitoring and recovery)")
    settings = home.load()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    db = Database(home.database_url(settings), pool_size=5, max_overflow=5)
    try:
        run_mona(db, settings.monitor, home.run, stop)
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
