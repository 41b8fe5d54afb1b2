"""Backup and restore on PostgreSQL, side by side with pg_dump -Fc and pg_restore.

Question: on PostgreSQL with 10,000 deployments, 100,000 VMs and 1,000,000
events, how long do `escadm backup` and `escadm restore` take and how large
is the archive, against `pg_dump -Fc` and `pg_restore` of the same database
in the same run? Aim: within 1.5x of pg_dump / pg_restore.

Everything on one host, over loopback, in one run:
- a PostgreSQL 15 server (tests/pg_server.py, durable: fsync on) and a
  source node (`init_node`, so Alembic makes the schema) whose database is
  filled in the server (INSERT ... SELECT FROM generate_series): 100 tenants,
  10,000 ACTIVE deployments with the example descriptor (two vm_groups, lb
  and app, with its KPIs, rules and day0 config), 100,000 ALIVE VMs, 100,000
  final transactions (a DEPLOY per deployment carrying its descriptor, then
  VM recoveries, reboots, scalings), 1,000,000 events (10 per transaction,
  messages of about 60 characters), 2 subscriptions and 10,000 delivered
  outbox rows, the default dynamic mappings, a custom script, 12 users;
  then VACUUM ANALYZE;
- backup: `write_backup` (what `escadm backup` runs) to .tar.gz and to
  .tar.bz2, and `pg_dump -Fc` (its default compression, gzip level 6) of
  the same database;
- restore: `restore` (what `escadm restore` runs, node stopped) of each
  archive into a fresh node on a fresh database of the same server (it
  builds the schema aside with Alembic, loads, migrates to head, swaps), and
  `pg_restore --exit-on-error -d DB` (one job, the default) of the dump
  into a fresh empty database; `pg_restore -j 2` too, for context;
- every restored database is checked against the source: per table, the
  row count and a sum of a 64-bit hash of every row's values (JSON columns
  compared as jsonb; the node's own escadm account, which a restore keeps
  on purpose, left out of the hash).
Times are wall seconds, best of --runs; a CHECKPOINT before each one. CPU
seconds of the client (this process, or the pg tool) and of the server
(postmaster with its reaped backends) are reported beside them, and how
busy every other process kept the machine meanwhile (a figure taken while
something else ran is not a figure of this code).

Usage: .venv/bin/python bench/bench_backup.py [--quick] [--runs 2]
           [--tenants 100] [--deployments 10000] [--vms 100000]
           [--transactions 100000] [--events 1000000] [--deliveries 10000]
           [--no-parallel] [--no-write] [--workdir DIR]
--quick: 1/20 of the data and one run, a smoke test. Writes a dated section
to docs/benchmarks.md unless --no-write or --quick. Needs root (PostgreSQL
runs as user postgres) and PostgreSQL 15 in /usr/lib/postgresql/15/bin.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

from esc.backup.dump import write_backup
from esc.backup.restore import restore
from esc.backup.signing import store_key
from esc.config import NodeHome, Settings
from esc.db.session import Database
from esc.descriptor import DATA_MODEL_VERSION, parse_descriptor
from esc.monitor.mappings import install_defaults_if_empty
from esc.node.setup import init_node

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from pg_server import PG_BIN, USER, PostgresServer, availability  # noqa: E402
from report import write_section  # noqa: E402

AIM = 1.5  # ours / pg_dump (pg_restore), at most
TIMES = "\u00d7"
T0 = "2025-11-27 00:00:00+00"  # the first row's created_at; rows spread over a year
YEAR_S = 365 * 86400
LOCAL_ACCOUNT = "escadm"  # a restore keeps the restoring node's own, by design


# the data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    tenants: int
    deployments: int
    vms: int
    transactions: int
    events: int
    deliveries: int

    @property
    def vms_per_deployment(self) -> int:
        return self.vms // self.deployments

    @property
    def events_per_transaction(self) -> int:
        return self.events // self.transactions


def group_layout(scale: Scale) -> list[tuple[str, int]]:
    """(vm_group, VMs) per deployment: a small lb group, the rest in app."""
    per = scale.vms_per_deployment
    lb = min(2, per - 1)
    return [("lb", lb), ("app", per - lb)]


def example_descriptor(scale: Scale) -> dict[str, Any]:
    """examples/deployment.yaml as the controller stores it, sized to the VMs per deployment."""
    descriptor = parse_descriptor((ROOT / "examples" / "deployment.yaml").read_text())
    data = descriptor.model_dump(mode="json")
    data["tenant"], data["deployment"]["name"] = "@TENANT@", "@NAME@"
    specs = data["deployment"]["vm_groups"]
    for group, (name, count) in zip(specs, group_layout(scale), strict=True):
        assert group["name"] == name
        group["scaling"]["min_active"] = min(group["scaling"]["min_active"], count)
        group["scaling"]["max_active"] = count
    return data


def tenant_name(expr: str, scale: Scale) -> str:
    return f"('tenant-' || lpad(mod({expr}, {scale.tenants})::text, 3, '0'))"


def deployment_name(expr: str) -> str:
    return f"('svc-' || lpad(({expr})::text, 5, '0'))"


def uid(prefix: str, expr: str) -> str:
    """A deterministic UUID, so rows can refer to each other without a join."""
    return f"(md5('{prefix}' || ({expr}))::uuid::text)"


def at(expr: str, count: int, extra: str = "0") -> str:
    """The created_at of row `expr` of `count`, spread over a year (plus `extra` seconds)."""
    return f"(timestamptz '{T0}' + make_interval(secs => ({expr}) * {YEAR_S / count} + {extra}))"


EVENT_KINDS = [
    # (type, message: %1$s is the VM's name, or the deployment's for SERVICE_ALIVE, status)
    ("VM_DEPLOYED", "VM %1$s deployed on the local VIM (flavor m1.medium)", "SUCCESS"),
    ("VM_ALIVE", "VM %1$s is alive: health check answered after bootup", "SUCCESS"),
    ("VM_RECOVERY_INIT", "recovery of VM %1$s started: VM_ALIVE false 3 times", "SUCCESS"),
    ("VM_REBOOTED", "VM %1$s rebooted, waiting for its health check to answer", "SUCCESS"),
    ("VM_RECOVERY_COMPLETE", "recovery of VM %1$s complete: ALIVE again after reboot", "SUCCESS"),
    ("VM_STOPPED", "VM %1$s stopped on request of the operator (VM_STOP)", "SUCCESS"),
    ("VM_STARTED", "VM %1$s started on request of the operator (VM_START)", "SUCCESS"),
    ("VM_ALIVE", "VM %1$s is alive again: health check answered in 0.4 s", "SUCCESS"),
    ("VM_RECOVERY_FAILED", "recovery of VM %1$s failed: no answer within bootup_time", "FAILURE"),
    ("SERVICE_ALIVE", "deployment %1$s is alive: every VM answers its health check", "SUCCESS"),
]
SERVICE_EVENT = len(EVENT_KINDS) - 1  # the one about the deployment, not a VM
TX_OPERATIONS = ["VM_RECOVER", "VM_REBOOT", "UPDATE", "VM_STOP", "VM_START", "VM_RECOVER"]
TX_ERROR = (
    "VM did not answer its health check within bootup_time 30 s; check its image, or "
    "raise the vm_group's bootup_time"
)


def populate(conn_args: dict[str, Any], url: str, scale: Scale) -> None:
    """Fill the node's database, in the server, with `scale`'s rows.

    Ids are deterministic UUIDs (md5 of a name and a number), so each table's
    rows refer to their parents without a join. The SQL uses mod(), not %,
    which psycopg would read as a placeholder.
    """
    s, layout = scale, group_layout(scale)
    D, X, per_vm = s.deployments, s.transactions, s.vms_per_deployment
    descriptor = example_descriptor(scale)
    groups = {g["name"]: g for g in descriptor["deployment"]["vm_groups"]}
    descriptor_text = json.dumps(descriptor)

    def own_descriptor(d: str) -> str:
        return (
            f"replace(replace(%(descriptor)s, '@TENANT@', {tenant_name(d, s)}), "
            f"'@NAME@', {deployment_name(d)})::json"
        )

    # The VM of index j (0 <= j < per_vm) of deployment d: its group and ordinal.
    vm_name = (
        "CASE "
        + " ".join(
            f"WHEN j >= {first} THEN {deployment_name('d')} || '-{name}-' || (j - {first})"
            for first, name in reversed(
                [(sum(c for _, c in layout[:i]), name) for i, (name, _) in enumerate(layout)]
            )
        )
        + " END"
    )
    statements: list[tuple[str, dict[str, Any]]] = [
        (
            "INSERT INTO tenants (id, name, created_at) "
            f"SELECT {uid('tenant', 't')}, {tenant_name('t', s)}, {at('t', s.tenants)} "
            f"FROM generate_series(0, {s.tenants - 1}) t",
            {},
        ),
        (
            "INSERT INTO deployments (id, tenant_id, name, data_model_version, status, "
            "descriptor, created_at, updated_at) "
            f"SELECT {uid('dep', 'd')}, {uid('tenant', f'mod(d, {s.tenants})')}, "
            f"{deployment_name('d')}, %(version)s, 'ACTIVE', {own_descriptor('d')}, "
            f"{at('d', D)}, {at('d', D, '5 * 86400')} "
            f"FROM generate_series(0, {D - 1}) d",
            {"version": DATA_MODEL_VERSION, "descriptor": descriptor_text},
        ),
    ]
    first = 0
    for name, count in layout:
        g = groups[name]
        statements.append(
            (
                "INSERT INTO vm_groups (id, deployment_id, name, image, flavor, min_active, "
                "max_active, elastic, desired_count, recovery_policy, bootup_time, "
                "recovery_wait_time, max_recovery_attempts, kpis, rules, day0_config) "
                f"SELECT {uid('grp-' + name, 'd')}, {uid('dep', 'd')}, %(name)s, %(image)s, "
                "%(flavor)s, %(min)s, %(max)s, %(elastic)s, %(count)s, %(policy)s, %(bootup)s, "
                "%(wait)s, %(retries)s, %(kpis)s::json, %(rules)s::json, %(day0)s::json "
                f"FROM generate_series(0, {D - 1}) d",
                {
                    "name": name,
                    "image": g["image"],
                    "flavor": g["flavor"],
                    "min": g["scaling"]["min_active"],
                    "max": g["scaling"]["max_active"],
                    "elastic": g["scaling"]["elastic"],
                    "count": count,
                    "policy": g["recovery_policy"]["action_on_recovery"],
                    "bootup": g["bootup_time"],
                    "wait": g["recovery_wait_time"],
                    "retries": g["recovery_policy"]["max_retries"],
                    "kpis": json.dumps(g["kpis"]),
                    "rules": json.dumps(g["rules"]),
                    "day0": json.dumps(g["day0_config"]),
                },
            )
        )
        index = f"d * {per_vm} + {first} + o"
        statements.append(
            (
                "INSERT INTO vms (id, vm_group_id, deployment_id, name, ordinal, state, "
                "address, recovery_attempts, created_at, updated_at) "
                f"SELECT {uid('vm', index)}, {uid('grp-' + name, 'd')}, {uid('dep', 'd')}, "
                f"{deployment_name('d')} || '-{name}-' || o, o, 'ALIVE', "
                f"'http://127.0.0.1:' || (20000 + mod({index}, 40000)), 0, "
                f"{at('d', D, '60 + o')}, {at('d', D, '86400 + o')} "
                f"FROM generate_series(0, {D - 1}) d, generate_series(0, {count - 1}) o "
                "ORDER BY d, o",
                {},
            )
        )
        first += count
    # Transactions: the first D are each deployment's DEPLOY, then VM operations and
    # scalings on its VMs; one in 50 FAILED.
    statements.append(
        (
            "INSERT INTO transactions (id, operation, state, tenant, deployment_name, "
            "deployment_id, lock_key, request, progress, automatic, resumes, error, "
            "created_at, started_at, finished_at) "
            f"SELECT {uid('tx', 'x')}, op, "
            "CASE WHEN mod(x, 50) = 49 THEN 'FAILED' ELSE 'SUCCESS' END, "
            f"{tenant_name('d', s)}, {deployment_name('d')}, {uid('dep', 'd')}, NULL, "
            "CASE op "
            f"WHEN 'DEPLOY' THEN json_build_object('descriptor', {own_descriptor('d')}) "
            "WHEN 'UPDATE' THEN json_build_object('scale', "
            "json_build_object('vm_group', 'app', 'count', 3, 'from', 2)) "
            "ELSE json_build_object('vm_id', "
            f"{uid('vm', f'd * {per_vm} + mod(x / {D}, {per_vm})')}) "
            "END, "
            "CASE op WHEN 'VM_RECOVER' THEN '{\"recovery_started\": true, \"rebooted\": true}' "
            "WHEN 'UPDATE' THEN '{\"model_applied\": true}' ELSE '{}' END::json, "
            "op = 'VM_RECOVER', (mod(x, 97) = 0)::int, "
            "CASE WHEN mod(x, 50) = 49 THEN %(error)s END, "
            f"{at('x', X)}, {at('x', X, '0.05')}, {at('x', X, '42.5')} "
            f"FROM (SELECT x, mod(x, {D}) AS d, CASE WHEN x < {D} THEN 'DEPLOY' "
            f"ELSE (%(operations)s::text[])[1 + mod(x / {D}, {len(TX_OPERATIONS)})] END AS op "
            f"FROM generate_series(0, {X - 1}) x) t ORDER BY x",
            {"descriptor": descriptor_text, "error": TX_ERROR, "operations": TX_OPERATIONS},
        )
    )
    # Events: events_per_transaction of each transaction, about VMs of its deployment.
    # Schema 0005 (release 1.1) adds a severity, derived from the status as ESC does.
    per_tx = s.events_per_transaction
    severity = ("", "")
    if "severity" in columns_of(conn_args, "events"):
        severity = (
            ", severity",
            ", CASE (%(statuses)s::text[])[1 + k] WHEN 'FAILURE' THEN 'ERROR' ELSE 'INFO' END",
        )
    statements.append(
        (
            "INSERT INTO events (type, status, message, tenant, deployment_name, "
            f"deployment_id, transaction_id, vm_id, vm_name, created_at{severity[0]}) "
            "SELECT (%(types)s::text[])[1 + k], (%(statuses)s::text[])[1 + k], "
            f"format((%(messages)s::text[])[1 + k], CASE WHEN k = {SERVICE_EVENT} "
            f"THEN {deployment_name('d')} ELSE vm_name END), "
            f"{tenant_name('d', s)}, {deployment_name('d')}, {uid('dep', 'd')}, "
            f"{uid('tx', 'x')}, "
            f"CASE WHEN k <> {SERVICE_EVENT} THEN {uid('vm', f'd * {per_vm} + j')} END, "
            f"CASE WHEN k <> {SERVICE_EVENT} THEN vm_name END, "
            f"{at('x', X, 'k * 4.25')}{severity[1]} "
            f"FROM (SELECT e, x, k, d, j, {vm_name} AS vm_name FROM ("
            f"SELECT e, e / {per_tx} AS x, mod(mod(e, {per_tx}), {len(EVENT_KINDS)}) AS k, "
            f"mod(e / {per_tx}, {D}) AS d, mod(e + e / {per_tx}, {per_vm}) AS j "
            f"FROM generate_series(0, {s.events - 1}) e) a) b ORDER BY e",
            {
                "types": [k[0] for k in EVENT_KINDS],
                "messages": [k[1] for k in EVENT_KINDS],
                "statuses": [k[2] for k in EVENT_KINDS],
            },
        )
    )
    statements += [
        (
            "INSERT INTO subscriptions (id, callback_url, tenant, created_at) VALUES "
            f"({uid('sub', '0')}, 'http://127.0.0.1:9000/esc/events', NULL, {at('0', 1)}), "
            f"({uid('sub', '1')}, 'https://oss.example.net/esc/notify', {tenant_name('0', s)}, "
            f"{at('0', 1)})",
            {},
        ),
        (
            "INSERT INTO deliveries (subscription_id, event_id, ordering_key, state, attempts, "
            "next_attempt_at, last_error, delivered_at) "
            f"SELECT {uid('sub', '0')}, id, tenant || '/' || deployment_name, 'DELIVERED', 1, "
            "created_at, NULL, created_at + interval '0.2 s' "
            f"FROM (SELECT * FROM events ORDER BY id DESC LIMIT {s.deliveries}) last "
            "ORDER BY id",
            {},
        ),
        (
            "INSERT INTO users (name, password_hash, created_at) "
            "SELECT 'operator' || u, 'scrypt$16384$8$1$' || "
            "encode(decode(md5('salt' || u), 'hex'), 'base64') || '$' || "
            "encode(decode(md5('a' || u) || md5('b' || u), 'hex'), 'base64'), "
            f"{at('u', 10)} FROM generate_series(0, 9) u",
            {},
        ),
        (
            "INSERT INTO custom_scripts (name, content, timeout, updated_at) "
            f"VALUES ('servicebooted.sh', %(content)s, 30, {at('0', 1)})",
            {"content": (ROOT / "examples" / "servicebooted.sh").read_text()},
        ),
    ]
    with psycopg.connect(**conn_args, autocommit=True) as conn:
        for statement, params in statements:
            conn.execute(statement, params or None)
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        with db.write() as session:
            install_defaults_if_empty(session)  # the controller's start-up does this
    finally:
        db.dispose()
    with psycopg.connect(**conn_args, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def columns_of(conn_args: dict[str, Any], table: str) -> set[str]:
    with psycopg.connect(**conn_args) as conn:
        return {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s",
                (table,),
            )
        }


# checking a restored database against the source ------------------------------

Fingerprint = dict[str, tuple[int, int]]


def fingerprint(conn_args: dict[str, Any]) -> Fingerprint:
    """Per table of schema public: (rows, sum of a 64-bit hash of each row's values)."""
    found: Fingerprint = {}
    with psycopg.connect(**conn_args, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        ]
        for table in tables:
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY column_name",
                (table,),
            ).fetchall()
            values = ", ".join(
                f'"{name}"::jsonb' if kind == "json" else f'"{name}"' for name, kind in columns
            )
            where = f"name <> '{LOCAL_ACCOUNT}'" if table == "users" else "true"
            rows, digest = conn.execute(
                f"SELECT count(*), coalesce(sum(hashtextextended(ROW({values})::text, 0)) "
                f'FILTER (WHERE {where}), 0) FROM public."{table}"'
            ).fetchone()
            found[table] = (rows, int(digest))
    return found


def compare(source: Fingerprint, restored: Fingerprint, what: str) -> None:
    if restored != source:
        wrong = sorted(
            f"{t}: {restored.get(t)} != {source.get(t)}"
            for t in source.keys() | restored.keys()
            if restored.get(t) != source.get(t)
        )
        raise SystemExit(f"{what}: the restored database differs from the source: {wrong}")


# measuring ----------------------------------------------------------------------


@dataclass
class Timing:
    wall: float
    client_cpu: float
    server_cpu: float
    other_cpu: float  # every other process on the machine, in the same window

    @property
    def other_cores(self) -> float:
        return self.other_cpu / self.wall

    def __str__(self) -> str:
        return (
            f"{self.wall:.2f} s, CPU client {self.client_cpu:.1f} s, server "
            f"{self.server_cpu:.1f} s, other processes {self.other_cores:.2f} cores"
        )


@dataclass
class Result:
    name: str
    runs: list[Timing] = field(default_factory=list)
    size: int = 0

    @property
    def best(self) -> Timing:
        return min(self.runs, key=lambda t: t.wall)


class Server:
    """The PostgreSQL server, with connection arguments and its CPU use."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        self.postmaster = psutil.Process(pid)
        time.sleep(1)  # its background processes have started
        self.background = {child.pid for child in self.postmaster.children()}

    def quiesce(self, timeout: float = 5.0) -> None:
        """Wait until every backend has exited and been reaped (its CPU counted once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(child.pid in self.background for child in self.postmaster.children()):
                return
            time.sleep(0.02)

    def conn_args(self, database: str) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.pg.port, "user": USER, "dbname": database}

    def cpu(self) -> float:
        """CPU seconds of the postmaster, its reaped backends and its live children."""
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
        return total

    def checkpoint(self) -> None:
        with psycopg.connect(**self.conn_args("postgres"), autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def tool(self, name: str, *args: str) -> list[str]:
        return [str(PG_BIN / name), "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", USER, *args]


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def timed(server: Server, action: Callable[[], object]) -> Timing:
    server.checkpoint()
    server.quiesce()
    server_before, self_before, children_before = server.cpu(), self_cpu(), children_cpu()
    busy_before = machine_busy()
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    busy = machine_busy() - busy_before
    server.quiesce()  # backends of the action, gone by now or about to be
    client = self_cpu() - self_before + children_cpu() - children_before
    server_cpu = server.cpu() - server_before
    return Timing(wall, client, server_cpu, max(0.0, busy - client - server_cpu))


# Signed as escadm backup signs, with a key the targets hold, as between real nodes.
BENCH_KEY = secrets.token_bytes(32)


def backup(url: str, path: Path) -> None:
    """What `escadm backup` does once its settings are read."""
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        write_backup(db, path, "bench-source", BENCH_KEY)
    finally:
        db.dispose()


def run_tool(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{Path(args[0]).name} failed: {result.stderr or result.stdout}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_node(root: Path, url: str, name: str) -> tuple[NodeHome, Settings]:
    home = NodeHome(root)
    settings = Settings.model_validate(
        {"node": {"name": name}, "api": {"port": free_port()}, "database": {"url": url}}
    )
    init_node(home, settings)
    return home, settings


def database_size(server: Server, database: str) -> int:
    with psycopg.connect(**server.conn_args("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()[0]


@dataclass
class Outcome:
    scale: Scale
    source_bytes: int
    rows: int
    backups: dict[str, Result]
    restores: dict[str, Result]
    runs: int
    total_s: float


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def measure(scale: Scale, runs: int, parallel: bool, work: Path) -> Outcome:
    began = time.perf_counter()
    pg = PostgresServer(durable=True)
    pg.start()
    try:
        server = Server(pg)
        source_url = pg.create_database("esc_source")
        make_node(work / "source", source_url, "bench-source")
        log(f"populating: {scale}")
        started = time.perf_counter()
        populate(server.conn_args("esc_source"), source_url, scale)
        log(f"populated in {time.perf_counter() - started:.0f} s")
        source = fingerprint(server.conn_args("esc_source"))
        rows = sum(count for count, _ in source.values())
        source_bytes = database_size(server, "esc_source")
        log(f"source: {rows:,} rows, {source_bytes / 2**20:,.0f} MiB; {source}")

        backups = {k: Result(k) for k in ("gz", "bz2", "pg_dump")}
        files = {
            "gz": work / "esc.tar.gz",
            "bz2": work / "esc.tar.bz2",
            "pg_dump": work / "pg.dump",
        }
        for run in range(runs):
            for kind in ("gz", "bz2"):
                files[kind].unlink(missing_ok=True)
                timing = timed(server, lambda k=kind: backup(source_url, files[k]))
                backups[kind].runs.append(timing)
                backups[kind].size = files[kind].stat().st_size
                log(f"backup {kind} run {run + 1}: {timing}, {backups[kind].size:,} bytes")
            files["pg_dump"].unlink(missing_ok=True)
            dump = server.tool("pg_dump", "-Fc", "-f", str(files["pg_dump"]), "esc_source")
            timing = timed(server, lambda c=dump: run_tool(c))
            backups["pg_dump"].runs.append(timing)
            backups["pg_dump"].size = files["pg_dump"].stat().st_size
            log(f"pg_dump run {run + 1}: {timing}, {backups['pg_dump'].size:,} bytes")

        restores = {k: Result(k) for k in ("gz", "bz2", "pg_restore", "pg_restore_j2")}
        serial = 0
        for run in range(runs):
            for kind in ("gz", "bz2"):
                serial += 1
                name = f"esc_restore_{serial}"
                target_url = pg.create_database(name)
                target_home, target_settings = make_node(work / name, target_url, "bench-target")
                store_key(target_home, BENCH_KEY)  # as backup-key import: the restore verifies
                timing = timed(
                    server, lambda h=target_home, s=target_settings, k=kind: restore(h, s, files[k])
                )
                compare(source, fingerprint(server.conn_args(name)), f"restore of {kind}")
                restores[kind].runs.append(timing)
                log(f"restore {kind} run {run + 1}: {timing}, checked")
                pg.drop_database(name)
                shutil.rmtree(work / name)
            for kind, jobs in (("pg_restore", 1), ("pg_restore_j2", 2)):
                if jobs > 1 and not parallel:
                    continue
                serial += 1
                name = f"pg_restore_{serial}"
                pg.create_database(name)
                command = server.tool(
                    "pg_restore", "--exit-on-error", "-j", str(jobs), "-d", name,
                    str(files["pg_dump"]),
                )  # fmt: skip
                timing = timed(server, lambda c=command: run_tool(c))
                compare(source, fingerprint(server.conn_args(name)), kind)
                restores[kind].runs.append(timing)
                log(f"{kind} run {run + 1}: {timing}, checked")
                pg.drop_database(name)
        return Outcome(
            scale, source_bytes, rows, backups, restores, runs, time.perf_counter() - began
        )
    finally:
        pg.stop()


# report ------------------------------------------------------------------------


def seconds(result: Result) -> str:
    best = result.best
    other = sorted(t.wall for t in result.runs)[1:]
    also = f" ({', '.join(f'{w:.1f}' for w in other)})" if other else ""
    return f"{best.wall:.1f} s{also}"


def cpu(result: Result) -> str:
    best = result.best
    return f"{best.client_cpu:.1f} / {best.server_cpu:.1f} s"


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def ratio(ours: Result, theirs: Result) -> float:
    return ours.best.wall / theirs.best.wall


def table(outcome: Outcome) -> list[str]:
    b, r = outcome.backups, outcome.restores
    lines = [
        "| | backup time | backup CPU client / server | archive size "
        "| restore time | restore CPU client / server |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("gz", "ESC, `.tar.gz`"), ("bz2", "ESC, `.tar.bz2`")):
        lines.append(
            f"| {label} | {seconds(b[kind])} | {cpu(b[kind])} | {mib(b[kind].size)} "
            f"| {seconds(r[kind])} | {cpu(r[kind])} |"
        )
    lines.append(
        f"| `pg_dump -Fc` / `pg_restore` | {seconds(b['pg_dump'])} | {cpu(b['pg_dump'])} "
        f"| {mib(b['pg_dump'].size)} | {seconds(r['pg_restore'])} | {cpu(r['pg_restore'])} |"
    )
    if r["pg_restore_j2"].runs:
        lines.append(
            f"| `pg_restore -j 2` (context) | | | | {seconds(r['pg_restore_j2'])} "
            f"| {cpu(r['pg_restore_j2'])} |"
        )
    return lines


def ratios(outcome: Outcome) -> list[str]:
    b, r = outcome.backups, outcome.restores
    lines = [
        "| ESC / pg | backup time | archive size | restore time (vs `pg_restore`) | verdict |",
        "|---|---|---|---|---|",
    ]
    for kind in ("gz", "bz2"):
        backup, restored = ratio(b[kind], b["pg_dump"]), ratio(r[kind], r["pg_restore"])
        met = backup <= AIM and restored <= AIM
        verdict = (
            "within the aim"
            if met
            else "over the aim: "
            + " and ".join(
                what for what, value in (("backup", backup), ("restore", restored)) if value > AIM
            )
        )
        lines.append(
            f"| `.tar.{kind}` | {backup:.2f}{TIMES} "
            f"| {b[kind].size / b['pg_dump'].size:.2f}{TIMES} "
            f"| {restored:.2f}{TIMES} | {verdict} |"
        )
    return lines


def other_load(outcome: Outcome) -> str:
    """How busy the rest of the machine was while the figures were measured."""
    results = [*outcome.backups.values(), *outcome.restores.values()]
    best = max(r.best.other_cores for r in results if r.runs)
    worst = max(t.other_cores for r in results for t in r.runs)
    return (
        f"Other processes on the machine (its busy CPU minus the client's and the server's) "
        f"used at most {best:.2f} cores during the best runs, {worst:.2f} during any run."
    )


def summary(outcome: Outcome) -> list[str]:
    s = outcome.scale
    return [
        f"Source: {s.tenants:,} tenants, {s.deployments:,} ACTIVE deployments "
        f"({len(group_layout(s))} vm_groups each), {s.vms:,} ALIVE VMs, "
        f"{s.transactions:,} transactions, {s.events:,} events, {s.deliveries:,} deliveries: "
        f"{outcome.rows:,} rows, {mib(outcome.source_bytes)} on disk (`pg_database_size`).",
    ]


def write_report(outcome: Outcome, args: argparse.Namespace) -> None:
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    runs = f"best of {outcome.runs}" if outcome.runs > 1 else "one run"
    command = " ".join(["bench/bench_backup.py", *sys.argv[1:]])
    write_section(
        "Backup and restore vs pg_dump",
        "\n".join(
            [
                f"## Backup and restore vs pg_dump ({today}, `bench/bench_backup.py`)",
                "",
                f"Machine: {os.cpu_count()} cores. PostgreSQL 15 (durable: fsync on, default "
                "settings otherwise) on the same host, over loopback. Aim: `escadm backup` and "
                f"`escadm restore` within {AIM:g}{TIMES} of `pg_dump -Fc` and `pg_restore` of the "
                "same database, measured in the same run.",
                "",
                *summary(outcome),
                "",
                *table(outcome),
                "",
                *ratios(outcome),
                "",
                "How measured:",
                "",
                "- The source node is made by `init_node` (Alembic builds the schema) and "
                "filled in the server with `INSERT … SELECT FROM generate_series`: deployments "
                "carry the example descriptor (`examples/deployment.yaml`), vm_groups its "
                "KPIs, rules and day0 config, each deployment's DEPLOY transaction the "
                "descriptor as its request; events have messages of about 60 characters. "
                "Then `VACUUM ANALYZE`.",
                "- ESC backup: `write_backup` (what `escadm backup` runs) of the source, to "
                "`.tar.gz` and `.tar.bz2`. `pg_dump -Fc` (its default gzip compression) of "
                "the same database, from the same host over 127.0.0.1.",
                "- ESC restore: `restore` (what `escadm restore` runs) of each archive into a "
                "fresh stopped node (`init_node`) on a fresh database of the same server: "
                "schema built aside by Alembic, its keys and indexes dropped, each member's "
                "rows copied in (COPY text format), keys and indexes rebuilt, migrated to "
                "head, swapped in. "
                "`pg_restore --exit-on-error -d` of the dump into a fresh empty database, one "
                "job (its default, the fair single-stream comparison); `-j 2` for context.",
                "- Every restored database is checked against the source before it counts: "
                "per table the row count and the sum of a 64-bit hash of each row's values "
                "(JSON compared as jsonb; the node's own `escadm` account, which a restore "
                "keeps by design, left out of the hash).",
                f"- Times are wall seconds, {runs} (other runs in brackets), each after a "
                "`CHECKPOINT`. CPU: seconds used by the client (the bench process for ESC, "
                "the pg tool otherwise) and by the server (postmaster, its backends and "
                f"background processes). {other_load(outcome)}",
                f"- Command: `.venv/bin/python {command}` (the whole run took "
                f"{outcome.total_s / 60:.0f} min).",
            ]
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2, help="each measurement, best of")
    parser.add_argument("--no-parallel", action="store_true", help="skip pg_restore -j 2")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1/20 of the data")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--workdir", type=Path, default=None, help="for archives (default /tmp)")
    args = parser.parse_args()
    if args.quick:
        for name in ("deployments", "vms", "transactions", "events", "deliveries"):
            setattr(args, name, getattr(args, name) // 20)
        args.runs = 1
    scale = Scale(
        args.tenants, args.deployments, args.vms, args.transactions, args.events, args.deliveries
    )
    if scale.vms % scale.deployments or scale.vms_per_deployment < 2:
        raise SystemExit("--vms must be a multiple (2 or more) of --deployments")
    if scale.events % scale.transactions:
        raise SystemExit("--events must be a multiple of --transactions")
    if scale.transactions < scale.deployments or scale.tenants > scale.deployments:
        raise SystemExit("need a transaction per deployment and a deployment per tenant")
    reason = availability()
    if reason:
        raise SystemExit(reason)
    work = Path(tempfile.mkdtemp(prefix="esc-bench-backup-", dir=args.workdir))
    try:
        outcome = measure(scale, args.runs, not args.no_parallel, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(["", *summary(outcome), "", *table(outcome), "", *ratios(outcome)]))
    print(other_load(outcome))
    if not (args.no_write or args.quick):
        write_report(outcome, args)


if __name__ == "__main__":
    main()
