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
from esc.monitor import scripts
from esc.monitor.actions import POST_EVENTS, Firing
from esc.monitor.kpis import actions_for
from esc.monitor.targets import GroupTarget, Snapshot, load_snapshot
from esc.monitor.watchers import GroupWatcher, VmWatcher, Watcher

log = logging.getLogger("esc.monitor")

STATUS_FILE = "mona.status.json"
# What each metric's metaData type means on the local VIM.
SUCCESS_FAILURE_METRICS = {"icmp_ping"}
THRESHOLD_METRICS = {"vnf_load": "load"}  # meta type -> field of GET /metrics
RECENT_ACTIONS = 20


class Mona:
    def __init__(
        self, db: Database, settings: MonitorSettings, run_dir: Path, *, status: bool = True
    ) -> None:
        self.db = db
        self.settings = settings
        self.run_dir = run_dir
        self.write_status_file = status
        self.watchers: dict[tuple[str, ...], Watcher] = {}
        self.snapshot = Snapshot("starting")
        self.actions_started = 0
        self.recent: deque[str] = deque(maxlen=RECENT_ACTIONS)
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="mona-db")

    # main loop ------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        log.info("MONA started (refresh every %g s)", self.settings.refresh_interval)
        try:
            while not should_stop():
                started = loop.time()
                try:
                    snapshot = await loop.run_in_executor(self._pool, self._load)
                except Exception as exc:  # the database away for a moment: keep watching
                    self._warn_once(f"reading what to watch failed: {exc}")
                else:
                    self.apply(snapshot)
                if self.write_status_file:
                    self._write_status()
                await asyncio.sleep(
                    max(0.0, self.settings.refresh_interval - (loop.time() - started))
                )
        finally:
            for watcher in self.watchers.values():
                watcher.stop()
            self.watchers.clear()
            for task in list(self._tasks):
                task.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            log.info("MONA stopped")

    def _load(self) -> Snapshot:
        with self.db.read() as session:
            return load_snapshot(session)

    # watchers -------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        if snapshot.paused != self.snapshot.paused:
            log.info("monitoring %s", f"paused: {snapshot.paused}" if snapshot.paused else "on")
        self.snapshot = snapshot
        wanted: dict[tuple[str, ...], Watcher] = {}
        for group in snapshot.groups:
            for kpi in group.kpis:
                for key, make in self._watchers_for(snapshot, group, kpi):
                    wanted[key] = make()  # cheap: nothing runs until start()
        for key in list(self.watchers):
            if key not in wanted or wanted[key].signature != self.watchers[key].signature:
                self.watchers.pop(key).stop()
        for key, watcher in wanted.items():
            if key in self.watchers:
                watcher.close()
            else:
                self.watchers[key] = watcher
                watcher.start()

    def _watchers_for(
        self, snapshot: Snapshot, group: GroupTarget, kpi: dict[str, Any]
    ) -> list[tuple[tuple[str, ...], Callable[[], Watcher]]]:
        metric_name = kpi["metric_collector"]["type"]
        metric = snapshot.metric(metric_name)
        options = {"probe_timeout": self.settings.probe_timeout, "on_change": self._changed}
        where = f"vm_group {group.name} of {group.tenant}/{group.deployment}"
        if metric is None:
            self._warn_once(
                f"{where}: KPI {kpi['event_name']} uses metric {metric_name!r}, which is not in "
                "the dynamic mappings: add it (escadm dynamic_mapping import)"
            )
            return []
        if metric.meta_type in SUCCESS_FAILURE_METRICS:
            return [
                (
                    ("vm", vm.id, kpi["event_name"]),
                    lambda vm=vm: VmWatcher(group, kpi, vm, **options),
                )
                for vm in group.watched_vms()
            ]
        if metric.meta_type in THRESHOLD_METRICS:
            field = THRESHOLD_METRICS[metric.meta_type]
            return [
                (
                    ("group", group.id, kpi["event_name"]),
                    lambda: GroupWatcher(group, kpi, field, **options),
                )
            ]
        self._warn_once(
            f"{where}: metric {metric_name!r} has metaData type {metric.meta_type!r}, which the "
            f"local VIM cannot collect (it collects "
            f"{', '.join(sorted(SUCCESS_FAILURE_METRICS | set(THRESHOLD_METRICS)))})"
        )
        return []

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
            vm_id=vm.id if vm else None,
            vm_name=vm.name if vm else None,
            address=vm.address if vm else None,
        )
        shown = "" if value is None or vm else f" (average {value:g})"
        log.info(
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
            self._spawn(self._post(post, firing))
        elif mapping.type == "SCRIPT":
            name = mapping.properties.get("script_filename", "")
            self._spawn(self._script(name, action, firing))

    def _spawn(self, coroutine: Any) -> None:
        self.actions_started += 1
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, post: Callable[[Database, Firing], str], firing: Firing) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._pool, post, self.db, firing)
        except Exception as exc:
            outcome = f"{firing.where}: action failed: {exc.__class__.__name__}: {exc}"
        self._note(outcome)

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
            "actions_started": self.actions_started,
            "recent_actions": list(self.recent),
        }

    def _write_status(self) -> None:
        path = self.run_dir / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, path)
        except OSError as exc:
            self._warn_once(f"cannot write {path}: {exc}")


def run_mona(db: Database, settings: MonitorSettings, run_dir: Path, stop: threading.Event) -> None:
    """Run MONA in this thread until `stop` is set (used by the service and `escadm run`)."""
    mona = Mona(db, settings, run_dir)
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
