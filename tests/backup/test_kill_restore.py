"""Issue must-show 4: `escadm restore` SIGKILLed while it loads leaves the node on its
previous database, which a controller starts on; running the restore again succeeds."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from backup_helpers import (
    aside_tables,
    backend_of,
    carry_key,
    checkpoint,
    make_node_fixture,  # noqa: F401 - the make_node fixture
    open_database,
    schemas,
    sqlite_aside,
    sqlite_path,
    url_of,
    user_hash,
)
from conftest import ESCADM, Node, all_rows, escadm, without_local_account
from sqlalchemy.engine import make_url

from esc.backup.dump import write_backup
from esc.backup.restore import ASIDE_SCHEMA
from esc.backup.signing import ensure_key
from esc.db.models import Tenant
from esc.engine.controller import Controller
from esc.security import LOCAL_USER

EVENTS = 150_000  # a restore of them takes a second or two on either backend
LOADING_WITHIN = 60  # seconds: the restore reaches its loading phase


def add_events(node: Node) -> None:
    """Many events rows, inserted directly (the driver's executemany)."""
    sqlite = backend_of(node) == "sqlite"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(EVENTS):
        moment = start + timedelta(milliseconds=i)
        rows.append(
            (
                "VM_ALIVE",
                "SUCCESS",
                f"event {i}: the VM answers its health check",
                "bulk",
                f"dep-{i % 100}",
                # SQLite keeps naive UTC text, as the models write it.
                moment.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else moment,
            )
        )
    mark = "?" if sqlite else "%s"
    sql = (
        "INSERT INTO events (type, status, message, tenant, deployment_name, created_at) "
        f"VALUES ({', '.join([mark] * 6)})"
    )
    db = open_database(node)
    try:
        with db.engine.begin() as connection:
            connection.exec_driver_sql(sql, rows)
        with db.write() as session:
            session.add(Tenant(name="source-tenant"))
    finally:
        db.dispose()


class LoadingProbe:
    """Is the restore into this node loading rows into its aside database yet?"""

    def __init__(self, node: Node) -> None:
        self.url = url_of(node)
        self.backend = backend_of(node)
        self.connection: psycopg.Connection | None = None
        if self.backend == "postgresql":
            url = make_url(self.url)
            self.connection = psycopg.connect(
                host=url.host, port=url.port, user=url.username, dbname=url.database,
                autocommit=True,
            )  # fmt: skip

    def loading(self) -> bool:
        if self.backend == "sqlite":
            # The load is one transaction: its pages spill into the aside's log as it grows.
            log = sqlite_aside(self.url).with_name(sqlite_aside(self.url).name + "-wal")
            return log.exists() and log.stat().st_size > 1_000_000
        assert self.connection is not None
        return bool(
            self.connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                ('COPY "events"%',),  # the largest table, copied into the aside schema
            ).fetchone()[0]
        )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def test_sigkill_mid_restore_leaves_the_previous_database(
    node: Node, make_node, tmp_path: Path
) -> None:
    add_events(node)
    db = open_database(node)
    try:
        archive = write_backup(db, tmp_path / "big.tar.gz", "source", ensure_key(node.home)).path
    finally:
        db.dispose()

    target = make_node(backend_of(node), "target")
    carry_key(node, target)
    target_url = url_of(target)
    db = open_database(target)
    try:
        with db.write() as session:
            session.add(Tenant(name="target-before-restore"))
    finally:
        db.dispose()
    before = all_rows(target_url)
    checkpoint(target_url)
    digest = (
        hashlib.sha256(sqlite_path(target_url).read_bytes()).hexdigest()
        if backend_of(target) == "sqlite"
        else None
    )

    probe = LoadingProbe(target)
    started = time.monotonic()
    process = subprocess.Popen(
        [ESCADM, "restore", "--file", str(archive), "--home", str(target.home.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while not probe.loading():
            assert process.poll() is None, (
                f"the restore ended ({process.returncode}) after "
                f"{time.monotonic() - started:.1f} s, before it could be killed while "
                f"loading: make EVENTS larger. {process.stderr.read().decode()[-2000:]}"
            )
            assert time.monotonic() - started < LOADING_WITHIN, "the restore never loaded"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        probe.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    # Killed half-way: its aside database is left, the node's own is untouched.
    if backend_of(target) == "sqlite":
        assert sqlite_aside(target_url).exists()
        assert hashlib.sha256(sqlite_path(target_url).read_bytes()).hexdigest() == digest
    else:
        assert ASIDE_SCHEMA in schemas(target_url)
        assert aside_tables(target_url) > 0
    assert all_rows(target_url) == before

    controller = Controller(target.home, target.settings)
    controller.start()
    assert controller.stop(timeout=10) == []

    own_escadm = user_hash(target_url, LOCAL_USER)
    again = escadm("restore", "--file", str(archive), home=target.home.root, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "restored the backup of source" in again.stdout

    restored = all_rows(target_url)
    expected = all_rows(url_of(node))
    assert len(restored["events"]) == EVENTS
    assert without_local_account(restored) == without_local_account(expected)
    assert user_hash(target_url, LOCAL_USER) == own_escadm
    if backend_of(target) == "sqlite":
        assert not sqlite_aside(target_url).exists()
    else:
        assert ASIDE_SCHEMA not in schemas(target_url)
