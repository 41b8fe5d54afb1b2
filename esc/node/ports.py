"""Is the API's port free? Asked before starting, to say so clearly."""

from __future__ import annotations

import errno
import socket


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
