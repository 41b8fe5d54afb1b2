"""MONA: watches the VMs the database says to watch, and acts on rule events.

Every `refresh_interval` it reads a snapshot (targets.py) in a worker thread
and reconciles its watchers with it: new KPIs get a watcher, changed ones a
fresh watcher, gone or paused ones are stopped. A watcher's state change
runs the rule's actions (actions.py, scripts.py). Its counters and the
mappings in force go to run/mona.status.json for `escadm monitor status`.

MONA keeps no state of its own that matters after a restart: a recovery it
started is a transaction in the database, and while that transaction is in
flight its deployment is not watched, so a restarted MONA (or node) never
recovers the same VM twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esc.config import MonitorSettings
from esc.db.session import Database
from esc.files import write_atomic
from esc.monitor import scripts
from esc.monitor.actions import POST_EVENTS, Firing, Outcome
from esc.monitor.kpis import actions_for
from esc.monitor.targets import GroupTarget, Snapshot, load_snapshot
from esc.monitor.watchers import GroupWatcher, LoopLag, VmWatcher, Watcher

log = logging.getLogger("esc.monitor")

STATUS_FILE = "mona.status.json"
# What each metric's metaData type means on the local VIM.
SUCCESS_FAILURE_METRICS = {"icmp_ping"}
THRESHOLD_METRICS = {"vnf_load": "load"}  # meta type -> field of GET /metrics
RECENT_ACTIONS = 20


class Mona:
    def __init__(
        self,
        db: Database,
        settings: MonitorSettings,
        run_dir: Path,
        *,
        status: bool = True,
        held_off: Callable[[], str | None] | None = None,
    ) -> None:
        self.db = db
        # Why this node must not monitor now (a node of a pair that is not the active),
        # None when it may: asked at each refresh.
        self.held_off = held_off or (lambda: None)
        self.settings = settings
        self.run_dir = run_dir
        self.write_status_file = status
        self.watchers: dict[tuple[str, ...], Watcher] = {}
        self.snapshot = Snapshot("starting")
        self.actions_started = 0
        self.recent: deque[str] = deque(maxlen=RECENT_ACTIONS)
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Reading what to watch has its own thread: it never waits behind action writes.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="mona-read")
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="mona-act")
        self.lag = LoopLag()
        # Deployments MONA just started a transaction on (loop time): not watched until a
        # snapshot read after that shows them busy (or done).
        self._acted: dict[str, float] = {}
        self._posting: set[str] = set()  # deployments with an automatic action being written
        self._polls_before = (0.0, 0)
        self._polls_rate = 0.0

    # main loop ------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        log.info("MONA started (refresh every %g s)", self.settings.refresh_interval)
        heartbeat = loop.create_task(self.lag.run())
        try:
            while not should_stop():
                started = loop.time()
                try:
                    snapshot = await loop.run_in_executor(self._reader, self._load)
                except Exception as exc:  # the database away for a moment: keep watching
                    self._warn_once(f"reading what to watch failed: {exc}")
                else:
                    snapshot.read_at = started
                    self.apply(snapshot)
                if self.lag.late > 0.5 * self.settings.refresh_interval:
                    self._warn_once(
                        "MONA runs late (more VMs than it can poll at their poll_frequency): "
                        "timeouts are not counted as failures meanwhile; see docs/benchmarks.md"
                    )
                if self.write_status_file:
                    self._write_status(loop.time())
                await asyncio.sleep(
                    max(0.0, self.settings.refresh_interval - (loop.time() - started))
                )
        finally:
            heartbeat.cancel()
            for watcher in self.watchers.values():
                watcher.stop()
            self.watchers.clear()
            for task in list(self._tasks):
                task.cancel()
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
            log.info("MONA stopped")

    def _load(self) -> Snapshot:
        with self.db.read() as session:
            snapshot = load_snapshot(session)
        why = self.held_off()
        return Snapshot(why, mappings=snapshot.mappings) if why else snapshot

    # watchers -------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Reconcile the watchers with `snapshot`; only new or changed ones are built."""
        if snapshot.paused != self.snapshot.paused:
            log.info("monitoring %s", f"paused: {snapshot.paused}" if snapshot.paused else "on")
        self.snapshot = snapshot
        wanted: dict[tuple[str, ...], tuple[tuple[Any, ...], Callable[[], Watcher]]] = {}
        for group in snapshot.groups:
            acted_at = self._acted.get(group.deployment_id)
            if acted_at is not None:
                if snapshot.read_at <= acted_at:
                    continue  # read before MONA's own transaction on it was written
                del self._acted[group.deployment_id]
            common = (repr(group.kpis), repr(group.rules))
            for kpi in group.kpis:
                wanted.update(self._watchers_for(snapshot, group, kpi, common))
        for key in list(self.watchers):
            if key not in wanted or wanted[key][0] != self.watchers[key].signature:
                self.watchers.pop(key).stop()
        for key, (_, make) in wanted.items():
            if key not in self.watchers:
                watcher = self.watchers[key] = make()
                watcher.start()

    def _watchers_for(
        self, snapshot: Snapshot, group: GroupTarget, kpi: dict[str, Any], common: tuple[Any, ...]
    ) -> dict[tuple[str, ...], tuple[tuple[Any, ...], Callable[[], Watcher]]]:
        metric_name = kpi["metric_collector"]["type"]
        metric = snapshot.metric(metric_name)
        where = f"vm_group {group.name} of {group.tenant}/{group.deployment}"
        if metric is None:
            self._warn_once(
                f"{where}: KPI {kpi['event_name']} uses metric {metric_name!r}, which is not in "
                "the dynamic mappings: add it (escadm dynamic_mapping import)"
            )
            return {}

        def options(signature: tuple[Any, ...]) -> dict[str, Any]:
            return {
                "signature": signature,
                "probe_timeout": self.settings.probe_timeout,
                "on_change": self._changed,
                "lag": self.lag,
            }

        event = kpi["event_name"]
        if metric.meta_type in SUCCESS_FAILURE_METRICS:
            found = {}
            for vm in group.watched_vms():
                signature = (*common, vm.address)
                found[("vm", vm.id, event)] = (
                    signature,
                    lambda vm=vm, sig=signature: VmWatcher(group, kpi, vm, **options(sig)),
                )
            return found
        if metric.meta_type in THRESHOLD_METRICS:
            field = THRESHOLD_METRICS[metric.meta_type]
            signature = (*common, tuple(vm.address for vm in group.alive_vms()))
            return {
                ("group", group.id, event): (
                    signature,
                    lambda: GroupWatcher(group, kpi, field, **options(signature)),
                )
            }
        self._warn_once(
            f"{where}: metric {metric_name!r} has metaData type {metric.meta_type!r}, which the "
            f"local VIM cannot collect (it collects "
            f"{', '.join(sorted(SUCCESS_FAILURE_METRICS | set(THRESHOLD_METRICS)))})"
        )
        return {}

    # rule actions ---------------------------------------------------------------

    def _changed(self, watcher: Watcher, state: bool, value: float | None) -> None:
        vm = watcher.vm
        firing = Firing(
            event_name=watcher.event_name,
            state=state,
            value=value,
            tenant=watcher.group.tenant,
            deployment=watcher.group.deployment,
            vm_group=watcher.group.name,
            deployment_id=watcher.group.deployment_id,
            vm_id=vm.id if vm else None,
            vm_name=vm.name if vm else None,
            address=vm.address if vm else None,
        )
        shown = "" if value is None or vm else f" (average {value:g})"
        # A VM found alive when its watcher starts is no news (thousands at a start-up).
        level = logging.DEBUG if state and watcher.first_change else logging.INFO
        log.log(
            level,
            "%s: KPI %s is %s%s",
            firing.where,
            firing.event_name,
            "TRUE" if state else "FALSE",
            shown,
            extra={"tags": "kpi"},
        )
        for action in actions_for(watcher.group.rules, watcher.event_name, state):
            self._dispatch(action, firing)

    def _dispatch(self, action: str, firing: Firing) -> None:
        mapping = self.snapshot.action(action)
        if mapping is None:
            self._note(f"{firing.where}: action {action!r} is not in the dynamic mappings")
            return
        if mapping.type == "LOG":
            self._note(f"{firing.where}: {firing.event_name} {action}")
        elif mapping.type == "ESC_POST_EVENT":
            event = mapping.properties.get("esc_event", "")
            post = POST_EVENTS.get(event)
            if post is None:
                self._note(
                    f"action {action!r}: esc_event {event!r} is not one of {', '.join(POST_EVENTS)}"
                )
                return
            if firing.deployment_id in self._posting:
                return  # one automatic write at a time per deployment: the engine's rule too
            self._posting.add(firing.deployment_id)
            self._spawn(self._post(post, firing))
        elif mapping.type == "SCRIPT":
            name = mapping.properties.get("script_filename", "")
            self._spawn(self._script(name, action, firing))

    def _spawn(self, coroutine: Any) -> None:
        self.actions_started += 1
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, post: Callable[[Database, Firing], Outcome], firing: Firing) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._pool, post, self.db, firing)
        except Exception as exc:
            outcome = Outcome(False, f"{firing.where}: action failed: {exc!r}")
        finally:
            self._posting.discard(firing.deployment_id)
        if outcome.started:
            # Its deployment now has a transaction in flight: its monitors are off from
            # now, not from the next refresh (no second action on stale counts).
            self._acted[firing.deployment_id] = loop.time()
            for key in [
                k for k, w in self.watchers.items() if w.group.deployment_id == firing.deployment_id
            ]:
                self.watchers.pop(key).stop()
        self._note(outcome.message)

    async def _script(self, name: str, action: str, firing: Firing) -> None:
        loop = asyncio.get_running_loop()

        def fetch() -> tuple[str, float]:
            with self.db.read() as session:
                row = scripts.get_script(session, name)
                return row.content, row.timeout

        try:
            content, timeout = await loop.run_in_executor(self._pool, fetch)
            path = scripts.materialise(self.run_dir / "scripts", name, content)
            result = await scripts.run_script(path, firing.environment(action), timeout)
        except Exception as exc:
            self._note(f"{firing.where}: script {name!r} not run: {exc}")
            return
        if result.exit_code is None:
            ended = f"killed after its timeout of {timeout:g} s"
        else:
            ended = f"exited {result.exit_code} after {result.seconds:.2f} s"
        output = result.output.strip().replace("\n", " | ")[-500:]
        self._note(f"{firing.where}: script {name} {ended}" + (f": {output}" if output else ""))

    def _note(self, message: str) -> None:
        log.info("%s", message, extra={"tags": "action"})
        self.recent.append(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    # status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        vms = {w.vm.id for w in self.watchers.values() if w.vm is not None}
        for watcher in self.watchers.values():
            if isinstance(watcher, GroupWatcher):
                vms.update(vm.id for vm in watcher.members)
        return {
            "pid": os.getpid(),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "paused": self.snapshot.paused,
            "watched_vms": len(vms),
            "watchers": len(self.watchers),
            "held_deployments": self.snapshot.held,
            "polls": sum(w.polls for w in self.watchers.values()),
            "polls_per_second": self._polls_rate,
            "loop_late_seconds": round(self.lag.late, 3),
            "actions_started": self.actions_started,
            "recent_actions": list(self.recent),
        }

    def _write_status(self, now: float) -> None:
        polls = sum(w.polls for w in self.watchers.values())
        then, before = self._polls_before
        if then and now > then and polls >= before:
            self._polls_rate = round((polls - before) / (now - then), 1)
        self._polls_before = (now, polls)
        path = self.run_dir / STATUS_FILE
        try:
            write_atomic(path, json.dumps(self.status()).encode())
        except OSError as exc:
            self._warn_once(f"cannot write {path}: {exc}")


def run_mona(
    db: Database,
    settings: MonitorSettings,
    run_dir: Path,
    stop: threading.Event,
    held_off: Callable[[], str | None] | None = None,
) -> None:
    """Run MONA in this thread until `stop` is set (used by the service and `escadm run`)."""
    mona = Mona(db, settings, run_dir, held_off=held_off)
    asyncio.run(mona.run(stop.is_set))


def read_status(run_dir: Path, max_age: float) -> dict[str, Any] | None:
    """MONA's last status, or None when missing or older than `max_age` seconds."""
    path = run_dir / STATUS_FILE
    try:
        if time.time() - path.stat().st_mtime > max_age:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
