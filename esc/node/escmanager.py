"""The escmanager service: REST API + transaction engine in one process."""

from __future__ import annotations

import errno
import socket

import uvicorn

from esc.api.app import create_app
from esc.config import NodeHome, Settings
from esc.engine.controller import Controller


class PortInUse(Exception):
    pass


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use: another ESC node or program "
                    "listens there; stop it, or set [api] port in esc.toml"
                ) from None
            raise


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
    uvicorn.Server(config).run()


def main() -> int:
    """`python -m esc.node.escmanager --home H`: how the supervisor runs the service."""
    import argparse

    from esc.node.logs import setup_service_logging

    parser = argparse.ArgumentParser(description="ESC escmanager service")
    parser.add_argument("--home", required=True)
    home = NodeHome.resolve(parser.parse_args().home)
    settings = home.load()
    setup_service_logging(home, "escmanager", to_stderr=False)
    serve(home, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
