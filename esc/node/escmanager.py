"""The escmanager service: REST API + transaction engine in one process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

import uvicorn

from esc.api.app import create_app
from esc.config import ConfigError, NodeHome, Settings
from esc.db.session import Database
from esc.engine.controller import Controller
from esc.engine.lease import DatabaseLease, StandaloneLease
from esc.ha.pgsql import Cluster
from esc.ha.provider import load_provider
from esc.ha.roles import RoleManager
from esc.monitor.mona import run_mona
from esc.node.http_server import server_config
from esc.node.ports import PortInUse, check_port_free
from esc.node.processes import ProcessRecord, remove_record, write_record
from esc.node.service_requests import request_restart
from esc.tls import server_files

log = logging.getLogger("esc.escmanager")


class _Server(uvicorn.Server):
    """uvicorn re-raises the signal that stopped it once it has shut down, so that
    the signal's default action follows (KeyboardInterrupt for SIGINT: click's
    "Aborted!" and exit 1; death for SIGTERM: exit 143, no clean-up). ESC's stop
    is already graceful and complete by then, so it ends as a normal return."""

    stopped_by: list[int]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self.stopped_by = list(self._captured_signals)
                self._captured_signals.clear()


def _pair_lease(settings: Settings) -> Callable[[Database], StandaloneLease] | None:
    """A node of a pair holds the active role under the lease; a standalone one always."""
    if not settings.ha.enabled:
        return None
    url = f"{settings.api.scheme}://{settings.ha.address}:{settings.api.port}"
    return lambda db: DatabaseLease(db, settings.node.name, url)


def _role_manager(home: NodeHome, settings: Settings, controller: Controller) -> RoleManager:
    """A node of a pair: the role manager that takes and drops the active role."""

    def restart_pgsql() -> None:
        request_restart(home, "pgsql")

    return RoleManager(
        home,
        settings,
        controller,
        Cluster(home, settings.ha),
        load_provider(home, settings.ha),
        restart_pgsql,
    )


def serve(home: NodeHome, settings: Settings, *, with_mona: bool = False) -> None:
    """Run the controller in the foreground until SIGINT/SIGTERM; `with_mona` also runs
    monitoring in this process (`escadm run`: the whole node in one foreground process)."""
    tls = server_files(home, settings)  # TlsError names the file before anything starts
    check_port_free(settings.api.host, settings.api.port)
    controller = Controller(home, settings, lease_for=_pair_lease(settings))
    if settings.ha.enabled:
        controller.ha = _role_manager(home, settings, controller)
    config = server_config(
        create_app(controller),
        settings.api,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        timeout_graceful_shutdown=10,
    )
    # Recorded here too (not only by the supervisor), so `escadm status` also
    # sees a controller run in the foreground with `escadm run`.
    names = ["escmanager", "mona"] if with_mona else ["escmanager"]
    for name in names:
        write_record(home.run, ProcessRecord.of(name, os.getpid()))
    stop_mona = threading.Event()
    mona = threading.Thread(
        target=run_mona,
        args=(controller.db, settings.monitor, home.run, stop_mona),
        name="mona",
        daemon=True,
    )
    try:
        if with_mona:
            mona.start()
        if controller.ha is not None:
            controller.ha.start()  # stopped by the controller's stop, before its engine
        server = _Server(config)
        server.run()
    finally:
        stop_mona.set()
        if mona.is_alive():
            mona.join(settings.monitor.refresh_interval + 5)
        for name in names:
            remove_record(home.run, name)
    why = ", ".join(signal.Signals(s).name for s in getattr(server, "stopped_by", []))
    log.info("ESC stopped%s", f" ({why})" if why else "")


def main() -> int:
    """`python -m esc.node.escmanager --home H`: how the supervisor runs the service."""
    from esc.node.logs import service_home

    home = service_home("escmanager", "ESC escmanager service")
    try:
        serve(home, home.load())
    except (ConfigError, PortInUse) as exc:
        # Said in the log, not as a traceback: the supervisor restarts it, then gives up.
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
