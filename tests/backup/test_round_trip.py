"""Backup of a node with real content and restore into a fresh node, every
compression, every table row for row; and across backends (SQLite <-> PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

from backup_helpers import (
    backend_of,
    carry_key,
    make_node_fixture,  # noqa: F401 - the make_node fixture
    schemas,
    sqlite_aside,
    url_of,
    user_hash,
)
from conftest import Node, all_rows, wait_transaction, without_local_account
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from esc.backup.dump import write_backup
from esc.backup.restore import ASIDE_SCHEMA, KEPT_SCHEMA, restore
from esc.backup.signing import ensure_key
from esc.backup.tables import backed_up_tables
from esc.db.models import Event
from esc.db.session import Database
from esc.engine.controller import Controller
from esc.security import ADMIN_USER, LOCAL_USER

DESCRIPTOR = {
    "tenant": "t1",
    "deployment": {
        "name": "web",
        "vm_groups": [
            {
                "name": "g",
                "image": "healthy",
                "flavor": "m1.tiny",
                "scaling": {"min_active": 2, "max_active": 4},
                "bootup_time": 10,
                # Values the archive must carry exactly: non-ASCII, tabs, backslashes,
                # quotes and newlines inside a JSON column.
                "day0_config": {"app.conf": 'name = "café"\tdir = C:\\esc\\\nend\r\n'},
            }
        ],
    },
}
SCRIPT = {"content": "#!/bin/sh\necho hi\n", "timeout": 5}
ODD_SCRIPT = {"content": "#!/bin/sh\n\tprintf 'caf\u00e9 \\\\ \"\\t\"\\n'\r\n", "timeout": 2.5}
FORMATS = [".tar.bz2", ".tar.gz", ".tar.xz", ".tar"]
EXTRACT = {".tar.bz2": "-xjf", ".tar.gz": "-xzf", ".tar.xz": "-xJf", ".tar": "-xf"}


def populate(api: TestClient) -> None:
    """Content through the API, as an operator makes it."""
    sub = api.post("/v0/subscriptions", json={"callback_url": "http://127.0.0.1:9/hook"})
    assert sub.status_code == 201, sub.text
    accepted = api.post(
        "/v0/deployments",
        content=json.dumps(DESCRIPTOR),
        headers={"content-type": "application/yaml"},
    )
    assert accepted.status_code == 202, accepted.text
    assert wait_transaction(api, accepted.json()["transaction_id"])["state"] == "SUCCESS"
    for name, body in (("hello.sh", SCRIPT), ("odd.sh", ODD_SCRIPT), ("gone.sh", SCRIPT)):
        assert api.put(f"/v0/scripts/{name}", json=body).status_code == 200
    # Idempotency keys, one kept with a body and one with an answer without a body.
    keyed = api.post(
        "/v0/subscriptions",
        json={"callback_url": "http://127.0.0.1:9/keyed"},
        headers={"Idempotency-Key": "keyed-subscription"},
    )
    assert keyed.status_code == 201, keyed.text
    gone = api.delete("/v0/scripts/gone.sh", headers={"Idempotency-Key": "keyed-delete"})
    assert gone.status_code == 204
    # Monitoring first: in MAINTENANCE every write but the op_mode is refused.
    assert api.put("/esc/monitoring", json={"mode": "STOPPED"}).status_code == 200
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200


def check_content(rows: dict) -> None:
    """The populated node's content is there (so the comparisons compare something)."""
    for table in ("tenants", "deployments", "vm_groups", "transactions", "subscriptions"):
        assert rows[table], table
    assert len(rows["vms"]) == 2
    assert len(rows["events"]) >= 3 and rows["deliveries"]
    assert {r["name"] for r in rows["custom_scripts"]} == {"hello.sh", "odd.sh"}
    keys = {r["key"]: r for r in rows["idempotency_keys"]}
    assert set(keys) == {"keyed-subscription", "keyed-delete"}
    assert keys["keyed-subscription"]["body"]["callback_url"] == "http://127.0.0.1:9/keyed"
    assert (keys["keyed-delete"]["status"], keys["keyed-delete"]["body"]) == (204, None)
    assert {r["name"] for r in rows["users"]} == {ADMIN_USER, LOCAL_USER}
    settings = {r["name"]: r["value"] for r in rows["controller_settings"]}
    assert "MAINTENANCE" in settings.values() and "STOPPED" in settings.values()
    assert rows["dynamic_mappings"]
    assert (
        rows["vm_groups"][0]["day0_config"]
        == DESCRIPTOR["deployment"]["vm_groups"][0]["day0_config"]
    )
    odd = next(r for r in rows["custom_scripts"] if r["name"] == "odd.sh")
    assert odd["content"] == ODD_SCRIPT["content"]


def backup_of(node: Node, path: Path) -> Path:
    db = Database(url_of(node), pool_size=1, max_overflow=0)
    try:
        write_backup(db, path, node.settings.node.name, key=ensure_key(node.home))
    finally:
        db.dispose()
    return path


def restore_and_compare(source: Node, target: Node, archive: Path) -> None:
    """Restore into `target` and check it holds the source's rows, with its own escadm."""
    source_url, target_url = url_of(source), url_of(target)
    own_escadm = user_hash(target_url, LOCAL_USER)
    carry_key(source, target)
    result = restore(target.home, target.settings, archive)
    assert result.signature.verified and result.unverified_because is None

    expected = all_rows(source_url)
    restored = all_rows(target_url)
    assert without_local_account(restored) == without_local_account(expected)
    assert set(restored) == set(expected)  # the same tables, alembic_version included
    assert result.rows["events"] == len(expected["events"])
    # The restoring node keeps its own escadm account; the admin is the source's.
    assert user_hash(target_url, LOCAL_USER) == own_escadm
    assert own_escadm != user_hash(source_url, LOCAL_USER)
    assert user_hash(target_url, ADMIN_USER) == user_hash(source_url, ADMIN_USER)

    if backend_of(target) == "sqlite":
        assert not sqlite_aside(target_url).exists()
    else:
        assert ASIDE_SCHEMA not in schemas(target_url)
        assert KEPT_SCHEMA in schemas(target_url)

    # Keys go on after the restored ones (PostgreSQL: the sequences were advanced).
    db = Database(target_url, pool_size=1, max_overflow=0)
    try:
        with db.write() as session:
            event = Event(
                type="AFTER_RESTORE",
                status="SUCCESS",
                message="",
                tenant="t",
                deployment_name="d",
                deployment_id=None,
                transaction_id=None,
            )
            session.add(event)
            session.flush()
            assert event.id == max(r["id"] for r in expected["events"]) + 1
            assert session.scalar(select(func.count()).select_from(Event)) == (
                len(expected["events"]) + 1
            )
    finally:
        db.dispose()


def check_with_tar(archive: Path, suffix: str, tmp_path: Path) -> None:
    """The archive as the standard tools see it."""
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    listed = subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    tables = [t.name for t in backed_up_tables()]
    assert listed == ["manifest.json", "manifest.sig", *[f"data/{t}.tsv" for t in tables]]

    into = tmp_path / f"extracted{suffix}"
    into.mkdir()
    subprocess.run(["tar", EXTRACT[suffix], str(archive), "-C", str(into)], check=True, timeout=30)
    manifest = json.loads((into / "manifest.json").read_text())
    assert manifest["format"] == "esc-backup" and manifest["format_version"] == 2
    assert list(manifest["tables"]) == tables
    for table, entry in manifest["tables"].items():
        data = (into / "data" / f"{table}.tsv").read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert data.count(b"\n") == entry["rows"]
        width = len(entry["columns"])
        assert all(len(line.split(b"\t")) == width for line in data.splitlines())


def test_round_trip_every_compression(
    api: TestClient, controller: Controller, node: Node, make_node, tmp_path: Path
) -> None:
    populate(api)
    controller.stop(timeout=10)
    check_content(all_rows(url_of(node)))

    for suffix in FORMATS:
        archive = backup_of(node, tmp_path / f"db{suffix}")
        check_with_tar(archive, suffix, tmp_path)
        fresh = make_node(backend_of(node), f"fresh{suffix.replace('.', '-')}")
        restore_and_compare(node, fresh, archive)


def test_cross_backend(
    api: TestClient, controller: Controller, node: Node, make_node, tmp_path: Path
) -> None:
    """A backup of a SQLite node restores into a PostgreSQL node and the other way round
    (the source is `node` on each backend in turn; the target is on the other)."""
    populate(api)
    controller.stop(timeout=10)
    archive = backup_of(node, tmp_path / "db.tar.gz")
    other = "postgresql" if backend_of(node) == "sqlite" else "sqlite"
    target = make_node(other, "other")
    restore_and_compare(node, target, archive)
    check_content(all_rows(url_of(target)))
