"""The node's supervisor: runs its services as child processes.

Small on purpose: start each service in its own process group, record it
under run/, restart one that dies (after a delay that doubles while it keeps
dying, so a broken service does not spin), and on SIGTERM stop them all,
gracefully first. A service that dies too often is given up and that is
recorded under run/ (`escadm status` shows it); SIGUSR1 (what `escadm start`
sends to a running node) starts every service that is not running, at once.
SIGUSR2 makes it read the requests under run/ (`esc.node.service_requests`):
restart one service, or stop it and keep it stopped; an exit it was asked for
is not a death. `escadm start` runs it detached; `escadm stop` sends it SIGTERM.

A standalone node has two services, escmanager (REST API and transaction
engine) and mona (monitoring and recovery). An HA node has also its
PostgreSQL (pgsql), keepalived and the gateway watch (`esc.ha.node_services`),
and the supervisor keeps its primary synchronous while the standby streams.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from esc.config import ConfigError, NodeHome, Settings
from esc.node.logs import service_home
from esc.node.processes import (
    RESTART,
    SERVICE_MODULES,
    STOP,
    SUPERVISOR,
    Death,
    GivenUp,
    ProcessRecord,
    ServiceSpec,
    held_path,
    remove_given_up,
    remove_record,
    request_path,
    take_request,
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


REQUEST_SIGNAL = signal.SIGUSR2  # "read the service requests under run/"


@dataclass
class Service:
    spec: ServiceSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    deaths: deque[tuple[float, Death]] = field(default_factory=deque)  # within the window
    quick_deaths: int = 0  # consecutive deaths after runs shorter than stable_after
    restart_at: float | None = None  # dead, to be restarted then
    given_up: bool = False
    # RESTART or STOP while an exit that was asked for is awaited: not a death.
    planned: str | None = None
    kill_at: float | None = None  # a planned stop not done by then is a SIGKILL
    # The thread running the service's own stop, which may go on after the process is
    # gone (keepalived's removes the VIP a killed keepalived left).
    stopper: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def command(self) -> list[str]:
        return self.spec.command


@dataclass(frozen=True)
class PeriodicTask:
    """Something the supervisor does every `interval` seconds while it runs."""

    name: str
    interval: float
    run: Callable[[], None]


def services(home: NodeHome, settings: Settings | None = None) -> list[Service]:
    """The node's services: an HA node's when settings say so, else a standalone one's."""
    if settings is not None and settings.ha.enabled:
        from esc.ha.node_services import ha_service_specs

        return [Service(spec) for spec in ha_service_specs(home, settings)]
    return [
        Service(ServiceSpec(name, [sys.executable, "-P", "-m", module, "--home", str(home.root)]))
        for name, module in SERVICE_MODULES.items()
    ]


def periodic_tasks(home: NodeHome, settings: Settings | None) -> list[PeriodicTask]:
    if settings is not None and settings.ha.enabled:
        from esc.ha.node_services import ha_periodic_tasks

        return [PeriodicTask(*task) for task in ha_periodic_tasks(home, settings)]
    return []


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Supervisor:
    def __init__(
        self,
        home: NodeHome,
        policy: RestartPolicy = RESTART_POLICY,
        settings: Settings | None = None,
    ) -> None:
        self.home = home
        self.policy = policy
        self.services = services(home, settings)
        self.tasks = periodic_tasks(home, settings)
        self.stopping = threading.Event()
        self.start_requested = threading.Event()
        self.requests_pending = threading.Event()

    def _start(self, service: Service, *, first: bool = False) -> None:
        service.planned = None
        service.kill_at = None
        if service.spec.before_start is not None:
            try:
                service.spec.before_start(first)
            except Exception as exc:  # counted as a death: retried, then given up
                log.error("%s cannot start: %s", service.name, exc)
                service.started_at = time.monotonic()
                self._died(service, 1)
                return
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

    def _signal(self, service: Service, signum: int, group: bool) -> None:
        if service.process is None:
            return
        try:
            if group:
                os.killpg(service.process.pid, signum)
            else:
                service.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def _begin_stop(self, service: Service) -> None:
        """Ask a running service to stop, its own way; it is killed if it has not
        stopped within STOP_TIMEOUT."""
        service.kill_at = time.monotonic() + STOP_TIMEOUT
        if service.spec.stop is not None:
            service.stopper = threading.Thread(target=self._own_stop, args=(service,), daemon=True)
            service.stopper.start()
        else:
            self._signal(service, service.spec.stop_signal, service.spec.signal_group)

    def _own_stop(self, service: Service) -> None:
        try:
            service.spec.stop()
        except Exception as exc:
            log.error("stopping %s failed: %s; it is killed", service.name, exc)
            self._signal(service, signal.SIGKILL, True)

    def _exited(self, service: Service, code: int) -> None:
        planned, service.planned = service.planned, None
        service.kill_at = None
        if planned is None:
            self._died(service, code)
            return
        service.process = None
        remove_record(self.home.run, service.name)
        if planned == RESTART:
            log.info("%s stopped (exit %d) for its requested restart", service.name, code)
            self._start(service)
        else:
            log.info("%s stopped on request (exit %d); held until started", service.name, code)

    def _take_requests(self) -> None:
        """SIGUSR2: the requests under run/ (a restart, or a stop that holds it)."""
        for service in self.services:
            verb = take_request(self.home.run, service.name)
            if verb is None:
                continue
            log.info("%s: %s requested", service.name, verb)
            if verb == STOP:
                held_path(self.home.run, service.name).touch(mode=0o600)
                service.restart_at = None
            else:
                held_path(self.home.run, service.name).unlink(missing_ok=True)
            if service.process is not None:
                if service.planned is None:
                    self._begin_stop(service)
                service.planned = verb
            elif verb == RESTART:
                self._reset_deaths(service)
                self._start(service)

    def _reset_deaths(self, service: Service) -> None:
        service.given_up = False
        service.deaths.clear()
        service.quick_deaths = 0
        remove_given_up(self.home.run, service.name)

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
            held_path(self.home.run, service.name).unlink(missing_ok=True)
            self._reset_deaths(service)
            self._start(service)

    def run(self) -> int:
        write_record(self.home.run, ProcessRecord.of(SUPERVISOR, os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(START_SIGNAL, lambda *_: self.start_requested.set())
        signal.signal(REQUEST_SIGNAL, lambda *_: self.requests_pending.set())
        for service in self.services:
            remove_given_up(self.home.run, service.name)
            held_path(self.home.run, service.name).unlink(missing_ok=True)
            request_path(self.home.run, service.name).unlink(missing_ok=True)
            self._start(service, first=True)
        for task in self.tasks:
            threading.Thread(target=self._repeat, args=(task,), name=task.name, daemon=True).start()
        while not self.stopping.wait(0.1):
            if self.start_requested.is_set():
                self.start_requested.clear()
                self._start_what_is_stopped()
            if self.requests_pending.is_set():
                self.requests_pending.clear()
                self._take_requests()
            for service in self.services:
                if service.process is not None:
                    code = service.process.poll()
                    if code is not None:
                        self._exited(service, code)
                    elif service.kill_at is not None and time.monotonic() >= service.kill_at:
                        log.error("%s did not stop when asked; killing it", service.name)
                        self._signal(service, signal.SIGKILL, True)
                        service.kill_at = None
                elif service.restart_at is not None and time.monotonic() >= service.restart_at:
                    self._start(service)
        self._stop_all()
        remove_record(self.home.run, SUPERVISOR)
        return 0

    def _repeat(self, task: PeriodicTask) -> None:
        failing = ""
        while not self.stopping.wait(task.interval):
            try:
                task.run()
                failing = ""
            except Exception as exc:  # said once per new failure, not at every round
                if str(exc) != failing:
                    log.warning("%s: %s", task.name, exc)
                failing = str(exc)

    def _stop_all(self) -> None:
        """Stop every service gracefully (SIGKILL after STOP_TIMEOUT): those marked
        stop_first alone first, those marked stop_last (the database) once all the
        others have stopped."""
        first = [s for s in self.services if s.spec.stop_first]
        middle = [s for s in self.services if not (s.spec.stop_first or s.spec.stop_last)]
        last = [s for s in self.services if s.spec.stop_last]
        for group in (first, middle, last):
            running = [s for s in reversed(group) if s.process and s.process.poll() is None]
            for service in running:
                log.info("stopping %s", service.name)
                self._begin_stop(service)
            deadline = time.monotonic() + STOP_TIMEOUT
            for service in running:
                try:
                    service.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error(
                        "%s did not stop within %.0f s; killing it", service.name, STOP_TIMEOUT
                    )
                    self._signal(service, signal.SIGKILL, True)
                    service.process.wait()
                # Its own stop finishes too before the next group stops and the
                # supervisor exits: what it does after the process is gone is part of it.
                if service.stopper is not None:
                    service.stopper.join(max(0.1, deadline - time.monotonic()))
        for service in self.services:
            remove_record(self.home.run, service.name)
            remove_given_up(self.home.run, service.name)
            held_path(self.home.run, service.name).unlink(missing_ok=True)


def main() -> int:
    home = service_home(SUPERVISOR, "ESC node supervisor (started by escadm start)", tagged=False)
    try:
        settings = home.load()
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return Supervisor(home, settings=settings).run()


if __name__ == "__main__":
    sys.exit(main())
