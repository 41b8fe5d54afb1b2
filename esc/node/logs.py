"""Logging of a node's service to log/<service>.log, rotated; a service's start."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys

from esc.config import NodeHome
from esc.logtags import TaggedFormatter
from esc.node.private import make_files_private

FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"


def setup_service_logging(
    home: NodeHome, service: str, *, to_stderr: bool = True, tagged: bool = False
) -> None:
    """Log to log/<service>.log, rotated; `tagged` uses ESC's [date=…][tid=…][cl=…] form."""
    home.log.mkdir(mode=0o700, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            home.log / f"{service}.log", maxBytes=20 * 1024 * 1024, backupCount=5
        )
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(TaggedFormatter() if tagged else logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic announces its context at every revision lookup (each health check);
    # the controller logs what a migration changed itself.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def service_home(service: str, description: str, *, tagged: bool = True) -> NodeHome:
    """How a service process starts (`python -m … --home H`, as the supervisor runs it):
    its home from the command line, its log set up."""
    make_files_private()  # also when started by hand, not by escadm
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--home", required=True)
    home = NodeHome.resolve(parser.parse_args().home)
    setup_service_logging(home, service, to_stderr=False, tagged=tagged)
    return home
