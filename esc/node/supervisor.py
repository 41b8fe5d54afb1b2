"""The node's supervisor: runs its services as child processes.

Small on purpose: start each service in its own process group, record it
under run/, restart one that dies (after a delay that doubles while it keeps
dying, so a broken service does not spin), and on SIGTERM stop them all,
gracefully first. A service that dies too often is given up and that is
recorded under run/ (`escadm status` shows it); SIGUSR1 (what `escadm start`
sends to a running node) starts every service that is not running, at once.
`escadm start` runs it detached; `escadm stop` sends it SIGTERM. Today the
node has two services, escmanager (REST API and transaction engine) and mona
(monitoring and recovery); pgsql and keepalived join in later releases.
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
from datetime import UTC, datetime

from esc.config import NodeHome
from esc.node.logs import service_home
from esc.node.processes import (
    SERVICE_MODULES,
    SUPERVISOR,
    Death,
    GivenUp,
    ProcessRecord,
    remove_given_up,
    remove_record,
    write_given_up,
    write_record,
)

log = logging.getLogger("esc.supervisor")

STOP_TIMEOUT = 60.0  # escmanager waits up to 30 s for in-flight transactions
START_SIGNAL = signal.SIGUSR1  # "start what is not running": sent by escadm start


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead service is restarted, and when it is given up."""

    first_delay: float = 0.5  # seconds before the first restart
    max_delay: float = 30.0  # the doubling stops here
    stable_after: float = 60.0  # a run this long was a success: the delay starts over
    deaths_allowed: int = 5  # this many deaths within `window` and it is given up
    window: float = 300.0

    def delay(self, quick_deaths: int) -> float:
        """Seconds to wait before restarting after the n-th consecutive quick death."""
        return min(self.max_delay, self.first_delay * 2 ** max(0, quick_deaths - 1))


RESTART_POLICY = RestartPolicy()


@dataclass
class Service:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    deaths: deque[tuple[float, Death]] = field(default_factory=deque)  # within the window
    quick_deaths: int = 0  # consecutive deaths after runs shorter than stable_after
    restart_at: float | None = None  # dead, to be restarted then
    given_up: bool = False


def services(home: NodeHome) -> list[Service]:
    return [
        Service(name, [sys.executable, "-P", "-m", module, "--home", str(home.root)])
        for name, module in SERVICE_MODULES.items()
    ]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Supervisor:
    def __init__(self, home: NodeHome, policy: RestartPolicy = RESTART_POLICY) -> None:
        self.home = home
        self.policy = policy
        self.services = services(home)
        self.stopping = threading.Event()
        self.start_requested = threading.Event()

    def _start(self, service: Service) -> None:
        output = open(self.home.log / f"{service.name}.out", "ab")  # noqa: SIM115 - child owns it
        os.chmod(output.name, 0o600)
        service.process = subprocess.Popen(
            service.command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, shown by `status --v`
            cwd=self.home.root,
        )
        output.close()
        service.started_at = time.monotonic()
        service.restart_at = None
        write_record(self.home.run, ProcessRecord.of(service.name, service.process.pid))
        log.info("%s started (pid %d)", service.name, service.process.pid)

    def _died(self, service: Service, code: int) -> None:
        """Record a death; schedule the restart, or give the service up."""
        now = time.monotonic()
        ran = now - service.started_at
        service.process = None
        remove_record(self.home.run, service.name)
        death = Death(_now_iso(), round(ran, 3), code)
        service.deaths.append((now, death))
        while service.deaths and now - service.deaths[0][0] > self.policy.window:
            service.deaths.popleft()
        service.quick_deaths = service.quick_deaths + 1 if ran < self.policy.stable_after else 1
        if len(service.deaths) >= self.policy.deaths_allowed:
            service.given_up = True
            given_up = GivenUp(service.name, _now_iso(), [d for _, d in service.deaths])
            write_given_up(self.home.run, given_up)
            log.error("%s %s; %s", service.name, death.how, given_up.describe())
            return
        delay = self.policy.delay(service.quick_deaths)
        service.restart_at = now + delay
        log.error(
            "%s %s after %.1f s; restarting it in %.1f s", service.name, death.how, ran, delay
        )

    def _start_what_is_stopped(self) -> None:
        """SIGUSR1: start every service that is not running now, given up or waiting."""
        for service in self.services:
            if service.process is not None:
                continue
            if service.given_up:
                log.info("%s: start requested after it was given up", service.name)
            service.given_up = False
            service.deaths.clear()
            service.quick_deaths = 0
            remove_given_up(self.home.run, service.name)
            self._start(service)

    def run(self) -> int:
        write_record(self.home.run, ProcessRecord.of(SUPERVISOR, os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(START_SIGNAL, lambda *_: self.start_requested.set())
        for service in self.services:
            remove_given_up(self.home.run, service.name)
            self._start(service)
        while not self.stopping.wait(0.1):
            if self.start_requested.is_set():
                self.start_requested.clear()
                self._start_what_is_stopped()
            for service in self.services:
                if service.process is not None:
                    code = service.process.poll()
                    if code is not None:
                        self._died(service, code)
                elif service.restart_at is not None and time.monotonic() >= service.restart_at:
                    self._start(service)
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
            remove_given_up(self.home.run, service.name)


def main() -> int:
    home = service_home(SUPERVISOR, "ESC node supervisor (started by escadm start)", tagged=False)
    return Supervisor(home).run()


if __name__ == "__main__":
    sys.exit(main())
