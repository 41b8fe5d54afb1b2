"""A member is checked whole (size, sha256, rows) before any of it is loaded: an archive
declaring many valid-looking rows with a wrong sha256 never fills the database aside,
and one declaring more than [backup] max_spool_bytes is refused before it is read."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from backup_helpers import (
    Archive,
    DatabaseState,
    backend_of,
    open_database,
    sqlite_aside,
    url_of,
    write_tar,
)
from conftest import ESCADM, Node
from sqlalchemy import create_engine, text

from esc.backup.dump import write_backup
from esc.backup.restore import ASIDE_SCHEMA

ROWS = 250_000  # about 18 MB of tenants: more than SMALL once loaded
SMALL = 8 * 2**20  # what the aside database may reach: its empty schema, not the rows


def many_tenants(count: int) -> bytes:
    return b"".join(
        b"%08x-0000-4000-8000-000000000000\ttenant-%d\t2026-01-01 00:00:00+00\n" % (i, i)
        for i in range(count)
    )


def forged(node: Node, tmp_path: Path, wrong_sha256: bool) -> Path:
    """The node's backup with a tenants member of ROWS rows: size and row count as the
    manifest says, the sha256 that of other bytes (or the right one)."""
    db = open_database(node)
    try:
        good = write_backup(db, tmp_path / "good.tar", "good").path
    finally:
        db.dispose()
    archive = Archive.read(good).replaced("tenants", many_tenants(ROWS), recompute=True)
    if wrong_sha256:
        archive.manifest["tables"]["tenants"]["sha256"] = hashlib.sha256(b"other").hexdigest()
    return write_tar(tmp_path / "forged.tar.gz", archive.entries(), "gz")


def aside_bytes(node: Node) -> int:
    url = url_of(node)
    if backend_of(node) == "sqlite":
        aside = sqlite_aside(url)
        files = [aside, aside.with_name(aside.name + "-wal")]
        return sum(f.stat().st_size for f in files if f.exists())
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"
                ),
                {"s": ASIDE_SCHEMA},
            ).scalar_one()
    finally:
        engine.dispose()


def restore_watched(node: Node, archive: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`escadm restore` run while the size of the database aside is watched; its result
    and the largest size seen."""
    command = [
        ESCADM,
        "restore",
        "--file",
        str(archive),
        "--allow-unsigned",
        "--home",
        str(node.home.root),
    ]
    largest = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            largest = max(largest, aside_bytes(node))
            time.sleep(0.02)
        stdout, stderr = p.communicate(timeout=10)
    return subprocess.CompletedProcess(command, p.returncode, stdout, stderr), largest


def test_a_member_with_a_wrong_sha256_never_reaches_the_database(
    node: Node, tmp_path: Path
) -> None:
    archive = forged(node, tmp_path, wrong_sha256=True)
    url = url_of(node)
    before = DatabaseState.of(url)
    data_files = set(node.home.data.iterdir())

    result, largest = restore_watched(node, archive)

    assert result.returncode == 1, result.stderr
    assert "data/tenants.tsv does not match its sha256" in result.stderr
    assert "Traceback" not in result.stderr
    assert largest < SMALL, f"the database aside grew to {largest} bytes"
    before.assert_unchanged(url)
    assert set(node.home.data.iterdir()) == data_files  # no spool left behind


def test_a_member_larger_than_the_spool_cap_is_refused_before_it_is_read(
    node: Node, tmp_path: Path
) -> None:
    archive = forged(node, tmp_path, wrong_sha256=False)
    node.settings.backup.max_spool_bytes = 2**20
    node.home.save(node.settings)
    url = url_of(node)
    before = DatabaseState.of(url)

    result, largest = restore_watched(node, archive)

    assert result.returncode == 1, result.stderr
    assert "data/tenants.tsv declares" in result.stderr
    assert "[backup] max_spool_bytes (1048576)" in result.stderr
    assert largest < SMALL
    before.assert_unchanged(url)


def test_a_genuine_large_member_is_spooled_and_restored(node: Node, tmp_path: Path) -> None:
    archive = forged(node, tmp_path, wrong_sha256=False)
    result = subprocess.run(
        [
            ESCADM,
            "restore",
            "--file",
            str(archive),
            "--allow-unsigned",
            "--home",
            str(node.home.root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(url_of(node))
    try:
        with engine.connect() as connection:
            count = connection.execute(text("SELECT count(*) FROM tenants")).scalar_one()
    finally:
        engine.dispose()
    assert count == ROWS
