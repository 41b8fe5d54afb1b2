"""The escmanager service: REST API + transaction engine in one process."""

from __future__ import annotations

import os

import uvicorn

from esc.api.app import create_app
from esc.config import NodeHome, Settings
from esc.engine.controller import Controller
from esc.node.ports import check_port_free
from esc.node.processes import ProcessRecord, remove_record, write_record


def serve(home: NodeHome, settings: Settings) -> None:
    """Run the controller in the foreground until SIGINT/SIGTERM."""
    check_port_free(settings.api.host, settings.api.port)
    controller = Controller(home, settings)
    config = uvicorn.Config(
        create_app(controller),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    # Recorded here too (not only by the supervisor), so `escadm status` also
    # sees a controller run in the foreground with `escadm run`.
    write_record(home.run, ProcessRecord.of("escmanager", os.getpid()))
    try:
        uvicorn.Server(config).run()
    finally:
        remove_record(home.run, "escmanager")


def main() -> int:
    """`python -m esc.node.escmanager --home H`: how the supervisor runs the service."""
    import argparse

    from esc.node.logs import setup_service_logging

    parser = argparse.ArgumentParser(description="ESC escmanager service")
    parser.add_argument("--home", required=True)
    home = NodeHome.resolve(parser.parse_args().home)
    settings = home.load()
    setup_service_logging(home, "escmanager", to_stderr=False, tagged=True)
    serve(home, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
