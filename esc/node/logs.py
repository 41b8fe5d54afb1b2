"""Logging of a node's service to log/<service>.log, rotated."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from esc.config import NodeHome

FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def setup_service_logging(home: NodeHome, service: str, *, to_stderr: bool = True) -> None:
    home.log.mkdir(mode=0o700, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            home.log / f"{service}.log", maxBytes=20 * 1024 * 1024, backupCount=5
        )
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(FORMAT)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
