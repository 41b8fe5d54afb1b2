"""MONA capacity: how many VMs one MONA process watches at a 1 s poll, and its CPU.

Question: with every VM polled once a second (KPI VM_ALIVE on ICMPPing,
metric_occurrences_false 1, rule "FALSE recover autohealing"), how many VMs
can one MONA process watch on this machine with a dead VM detected within
two poll periods (p99), and how much CPU does MONA use doing it?
Aim: at least 2,000 VMs with MONA under half a core.

For each size N, everything on 127.0.0.1:
- an endpoint host process (this file, `endpoints` subcommand) serves the N
  fake VMs, one listening port each, on asyncio (uvloop when importable):
  GET /health answers 200, HTTP/1.1 keep-alive, with a Content-Length and
  {"status": "alive", "vm_id": ..., "name": ...}. Told on stdin to fail a
  VM, it closes that VM's listener and connections (refused and reset, like
  a killed VM process) and answers the wall-clock time it did so;
- a node home in a temp dir (SQLite, `init_node`, the default dynamic
  mappings) whose rows are written directly: K one-VM deployments (the VMs
  that will fail; K = N/10, at most 200) and ACTIVE deployments of
  --per-deployment ALIVE VMs for the rest, addressed at the endpoint host's
  ports;
- MONA as its own process, `python -m esc.monitor.service --home H`, and no
  escmanager: the VM_RECOVER transactions MONA writes stay QUEUED.
Then, once run/mona.status.json reports N watched VMs:
- CPU: after --warmup s, MONA's user+system CPU seconds (psutil) over
  --duration s of steady polling with no failure, divided by the wall time,
  is the cores it uses; polls/s comes from the status file's `polls`;
- false recoveries: VM_RECOVER transactions for VMs that never failed (MONA's
  own event loop so late that polls of healthy VMs time out);
- detection: the K VMs fail in random order at random moments within
  --spread s. Latency = created_at of the VM's VM_RECOVER transaction - the
  moment its endpoint closed; p50, p99 (nearest rank), max. (Alone in their
  deployments, because MONA stops watching a deployment with a transaction
  open: a failure takes no live VM off MONA's load.)
A size passes when every failure is detected with p99 <= 2 poll periods
(2 s), no healthy VM is recovered, and MONA uses at most half a core.
Sizes stop after one that fails detection or has MONA over one core.

Usage: .venv/bin/python bench/bench_mona.py [--sizes 500,1000,2000,3000,4000]
           [--duration 20] [--warmup 10] [--quick] [--no-write]
Writes a dated section to docs/benchmarks.md unless --no-write or --quick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import psutil
from sqlalchemy import insert, select

from esc.config import NodeHome, Settings
from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Operation,
    RecoveryPolicy,
    Tenant,
    Transaction,
    Vm,
    VmGroup,
    VmState,
    new_id,
)
from esc.db.session import Database
from esc.descriptor import DATA_MODEL_VERSION
from esc.monitor.mappings import install_defaults_if_empty
from esc.node.setup import init_node

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from report import write_section  # noqa: E402

POLL = 1.0  # seconds between two polls of one VM (the KPI's poll_frequency)
DETECTION_AIM = 2 * POLL  # p99 within two poll periods
CPU_AIM = 0.5  # cores
CPU_GIVE_UP = 1.0  # cores: no larger size is tried after this
MAX_FAILURES = 200
KPIS = [
    {
        "event_name": "VM_ALIVE",
        "metric_value": 1,
        "metric_cond": "GT",
        "metric_occurrences_true": 1,
        "metric_occurrences_false": 1,
        "metric_collector": {"type": "ICMPPing", "poll_frequency": POLL},
    }
]
RULES = [{"event_name": "VM_ALIVE", "actions": ["FALSE recover autohealing"]}]


def raise_open_files_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); refuse when too low."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(needed, 65_536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"need {needed} open files, the hard limit is {target}: use smaller sizes")
    return target


# the endpoint host: N fake VMs in one process -----------------------------------

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class FakeVm:
    def __init__(self, vm_id: str, name: str) -> None:
        body = json.dumps({"status": "alive", "vm_id": vm_id, "name": name}).encode()
        self.response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.BaseTransport] = set()

    def fail(self) -> None:
        """As if the VM's process were killed: nothing listens, open connections drop."""
        if self.server is not None:
            self.server.close()
        for transport in list(self.connections):
            transport.abort()


class HealthEndpoint(asyncio.Protocol):
    def __init__(self, vm: FakeVm) -> None:
        self.vm = vm
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.vm.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.vm.connections.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            request = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            assert self.transport is not None
            healthy = request.startswith(b"GET /health ")
            self.transport.write(self.vm.response if healthy else NOT_FOUND)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve_endpoints(vms_file: Path) -> None:
    """Listen for every VM of `vms_file`, print the ports, then obey `fail I` lines."""
    loop = asyncio.get_running_loop()
    vms = [FakeVm(vm_id, name) for vm_id, name in json.loads(vms_file.read_text())]
    ports = []
    for vm in vms:
        vm.server = await loop.create_server(
            lambda vm=vm: HealthEndpoint(vm), "127.0.0.1", 0, backlog=64
        )
        ports.append(vm.server.sockets[0].getsockname()[1])
    _reply({"ports": ports, "loop": type(loop).__module__})
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():  # until the bench closes stdin
        verb, index = line.decode().split()
        assert verb == "fail", line
        vms[int(index)].fail()
        _reply({"failed": int(index), "at": time.time()})


def endpoints_main(vms_file: Path) -> None:
    raise_open_files_limit(2 * len(json.loads(vms_file.read_text())) + 100)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_endpoints(vms_file))
    else:
        uvloop.run(serve_endpoints(vms_file))


class EndpointHost:
    """The endpoint host process, driven through its stdin and stdout."""

    def __init__(self, vms_file: Path, log: Path) -> None:
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "endpoints", str(vms_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.log = log
        try:
            ready = self._read(timeout=120)
        except BaseException:
            self.stop()
            raise
        self.ports: list[int] = ready["ports"]
        self.loop_name: str = ready["loop"]

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            line = stdout.readline() if selector.select(timeout) else b""
        if not line:
            raise RuntimeError(f"the endpoint host did not answer: {self.log.read_text()[-2000:]}")
        return json.loads(line)

    def fail(self, index: int) -> float:
        """Fail VM `index`; the wall-clock time its endpoint closed."""
        stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        stdin.write(f"fail {index}\n".encode())
        stdin.flush()
        answer = self._read(timeout=10)
        assert answer["failed"] == index, answer
        return answer["at"]

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # end of its commands: it returns
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        stop_process(self.proc, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process and wait; if it lingers, kill its process group (its own session)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet, so the group is still ours
        proc.wait(10)


# the node: database rows for N VMs, and MONA -----------------------------------


@dataclass(frozen=True)
class FakeVmRow:
    id: str
    deployment: int  # index of its deployment
    ordinal: int  # in its vm_group

    @property
    def name(self) -> str:
        return f"d{self.deployment:05d}-g-{self.ordinal}"


def plan_vms(count: int, per_deployment: int, singles: int) -> list[FakeVmRow]:
    """`singles` one-VM deployments (the VMs that will fail) first, then deployments of
    `per_deployment` VMs (the last one maybe smaller): `count` VMs in all."""
    slots = [(d, 0) for d in range(singles)]
    rest = count - singles
    slots += [(singles + i // per_deployment, i % per_deployment) for i in range(rest)]
    return [FakeVmRow(str(uuid.uuid4()), d, ordinal) for d, ordinal in slots]


def make_node(root: Path, vms: list[FakeVmRow], ports: list[int]) -> NodeHome:
    """An initialised node home whose database holds the VMs, watched by MONA."""
    home = NodeHome(root)
    # As tests/conftest.py fast_settings, on the home's own SQLite file.
    settings = Settings.model_validate(
        {
            "node": {"name": "bench-mona"},
            "api": {"port": free_port()},
            "notifications": {"initial_backoff": 0.2, "max_backoff": 1.0, "timeout": 2.0},
        }
    )
    init_node(home, settings)  # creates the schema (Alembic), not the mappings
    db = Database(home.database_url(settings))
    try:
        with db.write() as session:
            install_defaults_if_empty(session)  # the controller's start-up does this
            tenant_id = new_id()
            session.execute(insert(Tenant), [{"id": tenant_id, "name": "bench"}])
            deployments = sorted({vm.deployment for vm in vms})
            dep_ids = {d: new_id() for d in deployments}
            group_ids = {d: new_id() for d in deployments}
            session.execute(
                insert(Deployment),
                [
                    {
                        "id": dep_ids[d],
                        "tenant_id": tenant_id,
                        "name": f"d{d:05d}",
                        "data_model_version": DATA_MODEL_VERSION,
                        "status": DeploymentStatus.ACTIVE,
                        "descriptor": {"tenant": "bench", "deployment": {"name": f"d{d:05d}"}},
                    }
                    for d in deployments
                ],
            )
            per_group = {d: sum(1 for vm in vms if vm.deployment == d) for d in deployments}
            session.execute(
                insert(VmGroup),
                [
                    {
                        "id": group_ids[d],
                        "deployment_id": dep_ids[d],
                        "name": "g",
                        "image": "healthy",
                        "flavor": "m1.tiny",
                        "min_active": per_group[d],
                        "max_active": per_group[d],
                        "elastic": False,
                        "desired_count": per_group[d],
                        "recovery_policy": RecoveryPolicy.REBOOT_THEN_REDEPLOY,
                        "bootup_time": 30.0,
                        "recovery_wait_time": 30.0,
                        "max_recovery_attempts": 3,
                        "kpis": KPIS,
                        "rules": RULES,
                        "day0_config": {},
                    }
                    for d in deployments
                ],
            )
            session.execute(
                insert(Vm),
                [
                    {
                        "id": vm.id,
                        "vm_group_id": group_ids[vm.deployment],
                        "deployment_id": dep_ids[vm.deployment],
                        "name": vm.name,
                        "ordinal": vm.ordinal,
                        "state": VmState.ALIVE,
                        "address": f"http://127.0.0.1:{port}",
                        "recovery_attempts": 0,
                    }
                    for vm, port in zip(vms, ports, strict=True)
                ],
            )
    finally:
        db.dispose()
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mona(home: NodeHome) -> subprocess.Popen[bytes]:
    # RLIMIT_NOFILE is inherited: raise_open_files_limit ran in this process first.
    with (home.log / "mona.out").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "esc.monitor.service", "--home", str(home.root)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def read_status(home: NodeHome) -> tuple[dict[str, Any], float] | None:
    """MONA's status file and its modification time (when its figures were taken)."""
    path = home.run / "mona.status.json"
    try:
        return json.loads(path.read_text()), path.stat().st_mtime
    except (OSError, ValueError):
        return None


def wait_watching(
    home: NodeHome, mona: subprocess.Popen[bytes], count: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mona.poll() is not None:
            raise RuntimeError(f"MONA exited {mona.returncode}: see {home.log}")
        status = read_status(home)
        if status is not None and status[0].get("watched_vms") == count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"MONA not watching {count} VMs within {timeout:g} s: {read_status(home)}")


def fresh_status(
    home: NodeHome, after: float, timeout: float = 15.0
) -> tuple[dict[str, Any], float]:
    """The first status MONA writes after time `after`; the last one it wrote if it writes
    none within `timeout` (an overloaded MONA refreshes late)."""
    deadline = time.monotonic() + timeout
    status = read_status(home)
    while time.monotonic() < deadline and (status is None or status[1] <= after):
        time.sleep(0.05)
        status = read_status(home)
    if status is None:
        raise RuntimeError(f"MONA wrote no status in {home.run}")
    return status


def recoveries(home: NodeHome) -> dict[str, float]:
    """vm_id -> created_at (epoch seconds) of each VM_RECOVER transaction."""
    db = Database(home.database_url(home.load()), pool_size=1, max_overflow=0)
    try:
        with db.read() as session:
            rows = session.execute(
                select(Transaction.request, Transaction.created_at).where(
                    Transaction.operation == Operation.VM_RECOVER
                )
            ).all()
    finally:
        db.dispose()
    return {request["vm_id"]: created_at.timestamp() for request, created_at in rows}


# one size ----------------------------------------------------------------------


@dataclass
class Steady:
    """MONA over a window of steady polling, no VM failing."""

    cores: float
    polls_per_s: float
    rss_mb: float
    host_cores: float  # the endpoint host
    other_cores: float  # every other process on the machine


@dataclass
class Detection:
    failures: int
    latencies: list[float]

    @property
    def detected(self) -> int:
        return len(self.latencies)


@dataclass
class Level:
    vms: int
    deployments: int
    steady: Steady
    false_recoveries: int  # healthy VMs MONA recovered anyway
    detection: Detection | None  # None when not tried (MONA already in trouble)
    endpoint_loop: str

    @property
    def p99(self) -> float:
        if not self.detection or not self.detection.latencies:
            return math.inf
        return percentile(self.detection.latencies, 0.99)

    @property
    def detection_ok(self) -> bool:
        return (
            self.false_recoveries == 0
            and self.detection is not None
            and self.detection.detected == self.detection.failures
            and self.p99 <= DETECTION_AIM
        )

    @property
    def passed(self) -> bool:
        return self.detection_ok and self.steady.cores <= CPU_AIM


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()  # guest time is inside user
    return times.user + times.nice + times.system + times.irq + times.softirq


def measure_steady(
    home: NodeHome, mona: psutil.Process, host: psutil.Process, duration: float
) -> Steady:
    before = fresh_status(home, time.time())
    mona0, host0, all0, wall0 = (
        cpu_seconds(mona),
        cpu_seconds(host),
        machine_busy_seconds(),
        time.monotonic(),
    )
    time.sleep(duration)
    mona1, host1, all1, wall1 = (
        cpu_seconds(mona),
        cpu_seconds(host),
        machine_busy_seconds(),
        time.monotonic(),
    )
    after = fresh_status(home, time.time())
    wall = wall1 - wall0
    cores, host_cores = (mona1 - mona0) / wall, (host1 - host0) / wall
    polls = after[0]["polls"] - before[0]["polls"]
    # The counter sums over the watchers in place: it shrinks when watchers go.
    steady_watchers = after[0]["watchers"] == before[0]["watchers"] and after[1] > before[1]
    return Steady(
        cores=cores,
        polls_per_s=polls / (after[1] - before[1]) if steady_watchers else math.nan,
        rss_mb=mona.memory_info().rss / 2**20,
        host_cores=host_cores,
        other_cores=max(0.0, (all1 - all0) / wall - cores - host_cores),  # jitter
    )


def detect(
    home: NodeHome,
    host: EndpointHost,
    victims: list[FakeVmRow],
    indexes: list[int],
    spread: float,
    rng: random.Random,
) -> Detection:
    """Fail the victims at random moments within `spread` s; time MONA's recoveries."""
    moments = sorted(rng.uniform(0, spread) for _ in victims)
    order = rng.sample(range(len(victims)), len(victims))
    failed_at: dict[str, float] = {}
    start = time.monotonic()
    for position, moment in zip(order, moments, strict=True):
        time.sleep(max(0.0, start + moment - time.monotonic()))
        failed_at[victims[position].id] = host.fail(indexes[position])
    deadline = time.monotonic() + 10 * POLL
    found = recoveries(home)
    while len(found.keys() & failed_at.keys()) < len(failed_at) and time.monotonic() < deadline:
        time.sleep(0.5)
        found = recoveries(home)
    return Detection(
        len(failed_at), [found[vm] - at for vm, at in failed_at.items() if vm in found]
    )


def run_level(
    count: int, per_deployment: int, warmup: float, duration: float, spread: float, seed: int
) -> Level:
    failures = min(MAX_FAILURES, count // 10)
    vms = plan_vms(count, per_deployment, singles=failures)
    with tempfile.TemporaryDirectory(prefix="esc-bench-mona-") as tmp:
        vms_file = Path(tmp) / "vms.json"
        vms_file.write_text(json.dumps([[vm.id, vm.name] for vm in vms]))
        host = EndpointHost(vms_file, Path(tmp) / "endpoints.log")
        mona = None
        try:
            home = make_node(Path(tmp) / "home", vms, host.ports)
            mona = start_mona(home)
            wait_watching(home, mona, count, timeout=60)
            mona_ps = psutil.Process(mona.pid)
            limit = mona_ps.rlimit(psutil.RLIMIT_NOFILE)[0]
            assert limit >= count + 100, f"MONA may open only {limit} files"
            time.sleep(warmup)
            steady = measure_steady(home, mona_ps, psutil.Process(host.proc.pid), duration)
            # No VM has failed yet: any recovery so far is of a healthy VM.
            false_recoveries = len(recoveries(home))
            detection = None
            if not false_recoveries:
                # The one-VM deployments come first: their VMs are vms[:failures].
                indexes = list(range(failures))
                victims = [vms[i] for i in indexes]
                detection = detect(home, host, victims, indexes, spread, random.Random(seed))
                false_recoveries = len(recoveries(home).keys() - {vm.id for vm in victims})
        finally:
            if mona is not None:
                stop_process(mona, signal.SIGTERM)
            host.stop()
    return Level(
        vms=count,
        deployments=vms[-1].deployment + 1,
        steady=steady,
        false_recoveries=false_recoveries,
        detection=detection,
        endpoint_loop=host.loop_name,
    )


# report ------------------------------------------------------------------------

HEADER = [
    "| VMs (deployments) | MONA CPU | polls/s | healthy VMs recovered | detected "
    "| detection p50 / p99 / max | MONA RSS | endpoint host CPU | other load | verdict |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def row(level: Level) -> str:
    steady, detection = level.steady, level.detection
    if level.passed:
        verdict = "pass"
    elif level.detection_ok:
        verdict = f"detection ok, CPU over {CPU_AIM:g} core"
    elif level.false_recoveries:
        verdict = "fail: MONA overloaded, healthy VMs recovered"
    else:
        verdict = "fail"
    if detection is None:
        detected, latency = "not tried", "-"
    else:
        detected = f"{detection.detected}/{detection.failures}"
        latency = (
            f"{statistics.median(detection.latencies):.2f} / {level.p99:.2f} / "
            f"{max(detection.latencies):.2f} s"
            if detection.latencies
            else "-"
        )
    # Watchers came and went in the window (MONA recovering healthy VMs): not steady polling.
    if math.isnan(steady.polls_per_s):
        cores, polls = "-", "-"
    else:
        cores, polls = f"{steady.cores:.2f} cores", f"{steady.polls_per_s:,.0f}"
    return (
        f"| {level.vms:,} ({level.deployments}) | {cores} | {polls} "
        f"| {level.false_recoveries} | {detected} | {latency} "
        f"| {steady.rss_mb:.0f} MB | {steady.host_cores:.2f} cores "
        f"| {steady.other_cores:.2f} cores | {verdict} |"
    )


def conclusion(levels: list[Level]) -> list[str]:
    both = [lv.vms for lv in levels if lv.passed]
    detection = [lv.vms for lv in levels if lv.detection_ok]
    tried = ", ".join(f"{lv.vms:,}" for lv in levels)
    return [
        f"- Largest size tried ({tried}) meeting both (p99 <= {DETECTION_AIM:g} s, MONA <= "
        f"{CPU_AIM:g} core): **{f'{max(both):,} VMs' if both else 'none'}**.",
        f"- Largest meeting the detection criterion only: "
        f"**{f'{max(detection):,} VMs' if detection else 'none'}**.",
        *(
            f"- At {lv.vms:,} VMs MONA fell so far behind that polls of healthy VMs timed out: "
            f"it started {lv.false_recoveries} recoveries of VMs that never failed."
            for lv in levels
            if lv.false_recoveries
        ),
    ]


def write_report(levels: list[Level], args: argparse.Namespace) -> None:
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    write_section(
        "MONA capacity",
        "\n".join(
            [
                f"## MONA capacity ({today}, `bench/bench_mona.py`)",
                "",
                f"Machine: {os.cpu_count()} cores. One MONA process "
                "(`python -m esc.monitor.service`, SQLite node, no escmanager) watching N "
                f"VMs, each polled every {POLL:g} s (KPI `VM_ALIVE` on `ICMPPing`, "
                "`metric_occurrences_false: 1`, rule `FALSE recover autohealing`). "
                "Aim: at least 2,000 VMs with MONA under half a core and a dead VM detected "
                f"within two poll periods ({DETECTION_AIM:g} s) at p99.",
                "",
                *HEADER,
                *(row(level) for level in levels),
                "",
                *conclusion(levels),
                "",
                "How measured:",
                "",
                "- The VMs are fake: one endpoint host process "
                f"({levels[0].endpoint_loop} event loop) listens on one 127.0.0.1 port per "
                "VM and answers `GET /health` (HTTP/1.1 keep-alive, the JSON with the VM's "
                "id that MONA checks). The rows "
                f"(ACTIVE deployments of {args.per_deployment} ALIVE VMs, besides the "
                "one-VM deployments below) are written straight into the database of a "
                "fresh node, one per size.",
                f"- MONA CPU: user+system CPU seconds of the MONA process (psutil) over "
                f"{args.duration:g} s of steady polling, after {args.warmup:g} s of warm-up, "
                "divided by the wall time. polls/s: the `polls` counter of "
                "`run/mona.status.json` over the same window (N/s when MONA keeps up). "
                "Endpoint host CPU and other load (every other process on the machine, "
                "including the bench itself) over the same window, for context: they share "
                "the cores with MONA.",
                f"- Detection: N/10 VMs (at most {MAX_FAILURES}) fail in random order at "
                f"random moments within {args.spread:g} s: the endpoint host closes the VM's "
                "listener and connections, as when a VM process is killed. Latency = "
                "`created_at` of the VM's `VM_RECOVER` transaction minus the moment of the "
                "failure; p99 is the nearest rank. The failing VMs are alone in one-VM "
                "deployments: MONA stops watching a deployment once its recovery transaction "
                "is open (these stay QUEUED: no escmanager runs), so a failure takes no live "
                "VM off MONA's load. Healthy VMs recovered: `VM_RECOVER` transactions for "
                "VMs that never failed (MONA late enough for its polls to time out); the "
                "detection step is skipped when there are any.",
                f"- Command: `.venv/bin/python bench/bench_mona.py --sizes {args.sizes} "
                f"--duration {args.duration:g}` (sizes after the first failing one are "
                "not tried).",
            ]
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="500,1000,2000,3000,4000", help="VM counts, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="steady CPU window, s")
    parser.add_argument("--warmup", type=float, default=10.0, help="s after MONA watches all")
    parser.add_argument("--spread", type=float, default=10.0, help="failures within this many s")
    parser.add_argument("--per-deployment", type=int, default=10, help="VMs per deployment")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 and 200 VMs")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.duration, args.warmup, args.spread = "100,200", 5.0, 3.0, 3.0
    sizes = [int(size) for size in args.sizes.split(",")]
    raise_open_files_limit(2 * max(sizes) + 200)
    levels: list[Level] = []
    for count in sizes:
        print(f"{count} VMs ...", flush=True)
        level = run_level(
            count, args.per_deployment, args.warmup, args.duration, args.spread, args.seed
        )
        levels.append(level)
        print(*HEADER, row(level), sep="\n", flush=True)
        if not level.detection_ok or level.steady.cores > CPU_GIVE_UP:
            break
    print("\n".join(["", *HEADER, *(row(level) for level in levels), "", *conclusion(levels)]))
    if not (args.no_write or args.quick):
        write_report(levels, args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["endpoints"]:
        endpoints_main(Path(sys.argv[2]))
    else:
        main()
