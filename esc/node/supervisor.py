"""The node's supervisor: runs its services as child processes.

Small on purpose: start each service in its own process group, record it
under run/, restart one that dies (with a bounded rate), and on SIGTERM stop
them all, gracefully first. `escadm start` runs it detached; `escadm stop`
sends it SIGTERM. Today the node has two services, escmanager (REST API and
transaction engine) and mona (monitoring and recovery); pgsql and keepalived
join in later releases.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from esc.config import NodeHome
from esc.node.logs import service_home
from esc.node.processes import (
    SERVICE_MODULES,
    SUPERVISOR,
    ProcessRecord,
    remove_record,
    write_record,
)

log = logging.getLogger("esc.supervisor")

RESTARTS_ALLOWED = 5  # within RESTART_WINDOW, then the service is left stopped
RESTART_WINDOW = 60.0
STOP_TIMEOUT = 60.0  # escmanager waits up to 30 s for in-flight transactions


@dataclass
class Service:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    restarts: deque[float] = field(default_factory=deque)
    given_up: bool = False


def services(home: NodeHome) -> list[Service]:
    return [
        Service(name, [sys.executable, "-P", "-m", module, "--home", str(home.root)])
        for name, module in SERVICE_MODULES.items()
    ]


class Supervisor:
    def __init__(self, home: NodeHome) -> None:
        self.home = home
        self.services = services(home)
        self.stopping = threading.Event()

    def _start(self, service: Service) -> None:
        output = open(self.home.log / f"{service.name}.out", "ab")  # noqa: SIM115 - child owns it
        service.process = subprocess.Popen(
            service.command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, shown by `status --v`
            cwd=self.home.root,
        )
        output.close()
        write_record(self.home.run, ProcessRecord.of(service.name, service.process.pid))
        log.info("%s started (pid %d)", service.name, service.process.pid)

    def _restart_allowed(self, service: Service) -> bool:
        now = time.monotonic()
        while service.restarts and now - service.restarts[0] > RESTART_WINDOW:
            service.restarts.popleft()
        if len(service.restarts) >= RESTARTS_ALLOWED:
            return False
        service.restarts.append(now)
        return True

    def run(self) -> int:
        write_record(self.home.run, ProcessRecord.of(SUPERVISOR, os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        for service in self.services:
            self._start(service)
        while not self.stopping.wait(0.5):
            for service in self.services:
                code = service.process.poll() if service.process else None
                if code is None or service.given_up:
                    continue
                remove_record(self.home.run, service.name)
                if self._restart_allowed(service):
                    log.error("%s exited with code %s; restarting it", service.name, code)
                    self._start(service)
                else:
                    service.given_up = True
                    log.error(
                        "%s exited with code %s; it died %d times in %.0f s, so it is "
                        "left stopped: see log/%s.log, then escadm restart",
                        service.name,
                        code,
                        RESTARTS_ALLOWED,
                        RESTART_WINDOW,
                        service.name,
                    )
        self._stop_all()
        remove_record(self.home.run, SUPERVISOR)
        return 0

    def _stop_all(self) -> None:
        running = [s for s in reversed(self.services) if s.process and s.process.poll() is None]
        for service in running:
            log.info("stopping %s", service.name)
            os.killpg(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for service in running:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it", service.name, STOP_TIMEOUT)
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        for service in self.services:
            remove_record(self.home.run, service.name)


def main() -> int:
    home = service_home(SUPERVISOR, "ESC node supervisor (started by escadm start)", tagged=False)
    return Supervisor(home).run()


if __name__ == "__main__":
    sys.exit(main())
