"""The node API's backups: taken on a node (the active or a standby: a real PostgreSQL
hot standby), listed, downloaded with their checksum, uploaded to another node (checked
whole and as an archive: manifest and signature), restored on the pair's active node
through its role manager's swap, as escadm restore does; and every refusal, changing
nothing.

A pair in one process: two nodes' controllers and role managers on a primary
PostgreSQL and its streaming standby, synchronous, as a pair's are. What cannot run
here is keepalived's VRRP: which node is MASTER is set on the role managers, as its
notify would (tests/ha runs whole pairs with it)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import Node, all_rows, fast_settings, need, without_local_account
from fastapi.testclient import TestClient
from pg_server import USER, PostgresServer, availability

from esc.api.app import create_app
from esc.backup import dump
from esc.backup.signing import ensure_key, signature_for, store_key
from esc.config import NodeHome, Settings
from esc.db import migrate
from esc.db.session import Database
from esc.engine.controller import Controller
from esc.engine.lease import DatabaseLease
from esc.ha.pgsql import Cluster
from esc.ha.role_record import ACTIVE, STANDBY
from esc.ha.roles import RoleManager
from esc.node.setup import init_node
from esc.upgrade.node_api import NodeApi, NodeApiError

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
# The orchestrator's client is given the app's TestClient, which takes no timeouts.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(api: TestClient, file: str, body: bytes, checksum: str | None = None, **params: str):
    return api.put(
        f"/esc/node/backups/{file}",
        content=body,
        params=params,
        headers={"X-Checksum-Sha256": checksum or sha256(body)},
    )


def stored(home: NodeHome) -> list[str]:
    """Every file of the backups directory, temporary ones included."""
    return sorted(p.name for p in home.backups.iterdir()) if home.backups.exists() else []


def archive_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def rebuilt(members: dict[str, bytes], key: bytes | None) -> bytes:
    """An archive of these members, its manifest signed with `key` (None: unsigned)."""
    out = io.BytesIO()
    entries = dict(members)
    entries.pop("manifest.sig", None)
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        names = ["manifest.json"]
        if key is not None:
            entries["manifest.sig"] = signature_for(key, entries["manifest.json"])
            names.append("manifest.sig")
        names += [n for n in entries if n.startswith("data/")]
        for name in names:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(entries[name]), 0o600
            tar.addfile(info, io.BytesIO(entries[name]))
    return out.getvalue()


# one node: take, list, download, upload, delete -----------------------------------------


def test_a_backup_is_taken_listed_downloaded_and_deleted(api: TestClient, node: Node) -> None:
    assert api.post("/v0/tenants", json={"name": "in-backup"}).status_code == 201
    taken = api.post("/esc/node/backups")
    assert taken.status_code == 201, taken.text
    view = taken.json()
    file = view["file"]
    assert taken.headers["location"] == f"/esc/node/backups/{file}"
    assert file.startswith(f"{node.settings.node.name}-") and file.endswith(".tar.gz")
    assert (view["schema"], view["database_schema"]) == (migrate.head_revision(),) * 2
    assert (view["node"], view["role"], view["release"]) == (
        node.settings.node.name,
        "STANDALONE",
        dump.__version__,
    )
    assert view["rows"] > 0 and view["seconds"] >= 0
    path = node.home.backups / file
    assert stat.S_IMODE(node.home.backups.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert view["size"] == path.stat().st_size and view["sha256"] == sha256(path.read_bytes())

    listed = api.get("/esc/node/backups").json()
    assert listed == [{k: v for k, v in view.items() if k in listed[0]}]
    assert set(listed[0]) == {"file", "sha256", "size", "schema", "taken_at", "node", "release"}

    got = api.get(f"/esc/node/backups/{file}")
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-checksum-sha256"] == sha256(got.content) == view["sha256"]
    members = archive_members(got.content)
    manifest = json.loads(members["manifest.json"])
    assert "manifest.sig" in members and manifest["schema_revision"] == view["schema"]
    assert b"in-backup" in members["data/tenants.tsv"]

    assert api.delete(f"/esc/node/backups/{file}").status_code == 204
    assert stored(node.home) == []
    for gone in (api.get(f"/esc/node/backups/{file}"), api.delete(f"/esc/node/backups/{file}")):
        assert gone.status_code == 404 and "GET /esc/node/backups lists them" in gone.text
    unknown = api.post("/esc/node/restore", json={"file": "nothing.tar.gz"})
    assert unknown.status_code == 404, unknown.text


@sqlite_only
def test_a_name_that_is_not_a_backup_is_refused(api: TestClient, node: Node) -> None:
    for name in (".hidden.tar.gz", "db.zip", "a%20b.tar", "x" * 140 + ".tar"):
        for response in (api.get(f"/esc/node/backups/{name}"), put(api, name, b"x")):
            assert response.status_code == 422, (name, response.text)
    traversal = api.get("/esc/node/backups/..%2Fesc.toml")
    assert traversal.status_code in (404, 422)
    assert stored(node.home) == []


def test_a_backup_as_of_an_older_revision_and_for_an_older_release(
    api: TestClient, node: Node
) -> None:
    older = api.post("/esc/node/backups", json={"schema": "0009", "for_release": "1.3.0.1"})
    assert older.status_code == 201, older.text
    view = older.json()
    assert (view["schema"], view["database_schema"], view["release"]) == (
        "0009",
        migrate.head_revision(),
        "1.3.0.1",
    )
    members = archive_members(api.get(f"/esc/node/backups/{view['file']}").content)
    manifest = json.loads(members["manifest.json"])
    assert "idempotency_keys" not in manifest["tables"]
    assert "vim" in manifest["tables"]["deployments"]["columns"]
    assert f"Written by ESC {dump.__version__}" in manifest["notes"]

    for body, status, words in (
        ({"schema": "0042"}, 422, "not one of this release's migrations"),
        ({"for_release": "9.0.0.1"}, 422, "newer than this ESC"),
        ({"schema": "00 9"}, 422, "schema"),
        ({"other": 1}, 422, "other"),
    ):
        refused = api.post("/esc/node/backups", json=body)
        assert refused.status_code == status and words in refused.json()["detail"], refused.text
    assert len(api.get("/esc/node/backups").json()) == 1


@pytest.fixture
def release_with_a_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This release's migrations as if they went on with an expand (0012: a table) and
    a contract (0013: the table dropped again, so the models are still the head's)."""
    location = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    down = migrate.head_revision()
    for revision, kind, body in (
        (
            "0012",
            "expand",
            '    op.create_table("later", sa.Column("id", sa.Integer, primary_key=True))',
        ),
        ("0013", "contract", '    op.drop_table("later")'),
    ):
        (location / "versions" / f"{revision}_scratch.py").write_text(
            "import sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = {revision!r}\ndown_revision = {down!r}\nesc_kind = {kind!r}\n\n\n"
            f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
        )
        down = revision
    caches = (migrate.script_directory, migrate.head_revision)
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", location)
    yield
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


def test_a_contract_migration_in_the_way_is_refused_naming_it(
    api: TestClient, controller: Controller, release_with_a_contract: None
) -> None:
    with controller.db.engine.begin() as connection:
        migrate.upgrade(connection, "head")  # to 0013, as the node's release has it
    for schema in ("0011", "0012"):
        refused = api.post("/esc/node/backups", json={"schema": schema})
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert f"cannot be written as of revision {schema}" in detail
        assert "migration 0013 (0013_scratch.py) is a contract migration" in detail
    at_head = api.post("/esc/node/backups", json={"schema": "0013"})
    assert at_head.status_code == 201 and at_head.json()["schema"] == "0013", at_head.text
    assert [b["schema"] for b in api.get("/esc/node/backups").json()] == ["0013"]


@sqlite_only
def test_a_backup_without_room_is_refused_507(
    api: TestClient, node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.home.backups.mkdir(mode=0o700)
    free = shutil.disk_usage(node.home.backups).free
    monkeypatch.setattr(dump, "ROOM_RESERVE_BYTES", free + 1)
    refused = api.post("/esc/node/backups")
    assert refused.status_code == 507, refused.text
    assert refused.json()["title"] == "Insufficient storage"
    assert "needs up to" in refused.json()["detail"]
    big = put(api, "big.tar.gz", b"x" * 10)  # declared: 10 bytes + the reserve
    assert big.status_code == 507 and "free room there" in big.json()["detail"], big.text
    assert stored(node.home) == []


@sqlite_only
def test_an_upload_is_checked_whole_and_as_an_archive_before_it_is_kept(
    api: TestClient, node: Node, tmp_path: Path
) -> None:
    taken = api.post("/esc/node/backups").json()
    good = api.get(f"/esc/node/backups/{taken['file']}").content
    members = archive_members(good)
    other_key = os.urandom(32)
    cases = {
        "bad checksum": (good, "ab" * 32, ["sha256", "ab" * 32]),
        "not hexadecimal": (good, "not-a-sha256", ["64 hexadecimal digits"]),
        "empty": (b"", None, ["empty"]),
        "not an archive": (b"PK\x03\x04" + os.urandom(500), None, ["not a readable ESC backup"]),
        "unsigned": (rebuilt(members, None), None, ["not signed", "allow_unsigned=true"]),
        "another key": (rebuilt(members, other_key), None, ["signed by key", "this node's"]),
        "altered after signing": (
            _resigned_then_altered(members, node),
            None,
            ["altered after it was signed"],
        ),
    }
    before = stored(node.home)
    for case, (body, checksum, words) in cases.items():
        refused = put(api, "upload.tar.gz", body, checksum)
        assert refused.status_code == 422, (case, refused.text)
        detail = refused.json()["detail"]
        for word in words:
            assert word in detail, (case, word, detail)
        assert stored(node.home) == before, case
    missing = api.put("/esc/node/backups/upload.tar.gz", content=good)
    assert missing.status_code == 422 and "X-Checksum-Sha256" in missing.text

    unsigned = put(api, "unsigned.tar.gz", rebuilt(members, None), allow_unsigned="true")
    assert unsigned.status_code == 201, unsigned.text
    copy = put(api, "copy.tar", good)  # any name of an archive, its content the judge
    assert copy.status_code == 201, copy.text
    assert {k: copy.json()[k] for k in ("schema", "taken_at", "node", "release")} == {
        k: taken[k] for k in ("schema", "taken_at", "node", "release")
    }
    assert (
        copy.json()["sha256"] == sha256(good)
        and (node.home.backups / "copy.tar").read_bytes() == good
    )
    again = put(api, "copy.tar", good)  # the same name again replaces it
    assert again.status_code == 201
    names = sorted(b["file"] for b in api.get("/esc/node/backups").json())
    assert names == sorted([taken["file"], "unsigned.tar.gz", "copy.tar"])
    assert not [n for n in stored(node.home) if n.startswith(".")]


def _resigned_then_altered(members: dict[str, bytes], node: Node) -> bytes:
    """Signed with the node's own key, then its manifest changed: the MAC no longer holds."""
    key = ensure_key(node.home)
    signed = dict(members)
    signed["manifest.sig"] = signature_for(key, members["manifest.json"])
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        altered = members["manifest.json"].replace(b'"notes": "', b'"notes": "!', 1)
        for name, data in [("manifest.json", altered), ("manifest.sig", signed["manifest.sig"])] + [
            (n, d) for n, d in members.items() if n.startswith("data/")
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@sqlite_only
def test_a_standalone_node_does_not_restore_through_its_api(api: TestClient, node: Node) -> None:
    file = api.post("/esc/node/backups").json()["file"]
    before = all_rows(node.settings.database.url)
    refused = api.post("/esc/node/restore", json={"file": file})
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert "a standalone node restores only stopped" in detail
    assert f"escadm restore --file {node.home.backups / file}" in detail
    assert all_rows(node.settings.database.url) == before
    bad = api.post("/esc/node/restore", json={"file": file, "allow_unsigned": "yes"})
    assert bad.status_code == 422


@sqlite_only
def test_the_backup_routes_are_served_in_maintenance(api: TestClient, node: Node) -> None:
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    taken = api.post("/esc/node/backups")
    assert taken.status_code == 201, taken.text
    body = api.get(f"/esc/node/backups/{taken.json()['file']}").content
    assert put(api, "again.tar.gz", body).status_code == 201
    assert api.delete("/esc/node/backups/again.tar.gz").status_code == 204
    # Refused for being standalone, not for MAINTENANCE.
    restore = api.post("/esc/node/restore", json={"file": taken.json()["file"]})
    assert restore.status_code == 409 and "MAINTENANCE" not in restore.text
    assert json.loads(archive_members(body)["manifest.json"])["schema_revision"]


# a pair in one process --------------------------------------------------------------------

NET = "198.18.99"
ACTIVE_ADDRESS, STANDBY_ADDRESS = f"{NET}.11", f"{NET}.12"
# The active node's own state, not the pair's data: its lease renewed, executors beating.
VOLATILE = {"active_lease", "owners"}


class ServerCluster(Cluster):
    """A node's PostgreSQL as the role manager asks it (esc.ha.replication), here one of
    the test's servers rather than the node's own under its home."""

    def __init__(self, home: NodeHome, settings: Settings, server: PostgresServer) -> None:
        super().__init__(home, settings.ha)
        self.server = server

    def connect(self, dbname: str = "postgres", timeout: float = 2.0):  # type: ignore[override]
        return psycopg.connect(
            host=str(self.server.socket_dir),
            port=self.server.port,
            user=USER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
        )


@dataclass
class PairNode:
    name: str
    home: NodeHome
    settings: Settings
    controller: Controller
    manager: RoleManager
    api: TestClient

    @property
    def url(self) -> str:
        return self.home.database_url(self.settings)

    def client(self) -> NodeApi:
        """The orchestrator's client of this node, over this node's app."""
        client = NodeApi(f"http://{self.settings.ha.address}:8080", ("admin", ""), False)
        client._http.close()
        client._http = self.api  # the app in this process, with the admin's login
        return client


@dataclass
class Servers:
    primary: PostgresServer
    standby: PostgresServer

    def synchronous(self, on: bool) -> None:
        names = f'"{STANDBY_ADDRESS}"' if on else ""
        with psycopg.connect(
            host=str(self.primary.socket_dir),
            port=self.primary.port,
            user=USER,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            wanted = "sync" if on else "async"
            while True:
                row = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (STANDBY_ADDRESS,),
                ).fetchone()
                if row and row[0] == wanted:
                    return
                assert time.monotonic() < deadline, f"the standby is not {wanted}: {row}"
                time.sleep(0.05)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """A primary and its streaming standby, named as the pair's standby address."""
    need(availability())
    primary = PostgresServer()
    primary.start()
    standby = None
    try:
        standby = primary.start_standby()
        with psycopg.connect(
            host=str(standby.socket_dir),
            port=standby.port,
            user=USER,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conninfo = conn.execute("SHOW primary_conninfo").fetchone()[0]
            conninfo = f"{conninfo} application_name={STANDBY_ADDRESS}".replace("'", "''")
            conn.execute(f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
            conn.execute("SELECT pg_reload_conf()")
        pair = Servers(primary, standby)
        pair.synchronous(True)
        yield pair
        pair.synchronous(False)
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def _ha_settings(url: str, name: str, address: str) -> Settings:
    return fast_settings(
        url,
        node={"name": name},
        ha={
            "enabled": True,
            "node_list": [ACTIVE_ADDRESS, STANDBY_ADDRESS],
            "address": address,
            "kad_vip": f"{NET}.100/24",
            "gateway_ip": f"{NET}.1",
        },
    )


def _pair_node(
    home: NodeHome, settings: Settings, server: PostgresServer, role: str, password: str
) -> PairNode:
    lease_url = f"http://{settings.ha.address}:{settings.api.port}"
    controller = Controller(
        home, settings, lease_for=lambda db: DatabaseLease(db, settings.node.name, lease_url)
    )
    manager = RoleManager(
        home, settings, controller, ServerCluster(home, settings, server), None, lambda: None
    )
    controller.ha = manager
    controller.start()
    if role == ACTIVE:  # keepalived's MASTER: the role is taken as become_active takes it
        controller.take_active()
    manager.role, manager.reason = role, f"{role} of the pair in this process"
    app = create_app(controller, manage_lifecycle=False)
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    api = TestClient(
        app, headers={"Authorization": f"Basic {token}"}, raise_server_exceptions=False
    )
    api.__enter__()
    return PairNode(settings.node.name, home, settings, controller, manager, api)


@pytest.fixture
def pair(servers: Servers, tmp_path: Path) -> Iterator[tuple[PairNode, PairNode]]:
    """(active, standby): n1 on the primary, n2 on its standby, one database of theirs."""
    name = f"esc_{uuid.uuid4().hex[:12]}"
    url = servers.primary.create_database(name)
    home1, home2 = NodeHome(tmp_path / "n1"), NodeHome(tmp_path / "n2")
    password = init_node(home1, fast_settings(url, node={"name": "n1"})).admin_password or ""
    home2.data.mkdir(parents=True)
    store_key(home2, ensure_key(home1))  # the pair's one backup key (its pair file carries it)
    _wait_replayed(servers, name)
    nodes: list[PairNode] = []
    try:
        nodes.append(
            _pair_node(
                home1, _ha_settings(url, "n1", ACTIVE_ADDRESS), servers.primary, ACTIVE, password
            )
        )
        standby_url = servers.standby.url(name)
        nodes.append(
            _pair_node(
                home2,
                _ha_settings(standby_url, "n2", STANDBY_ADDRESS),
                servers.standby,
                STANDBY,
                password,
            )
        )
        yield nodes[0], nodes[1]
    finally:
        for node in reversed(nodes):
            node.api.__exit__(None, None, None)
            # Not a node's stop in a pair (the active would hand its role to a peer that
            # has no role manager running here): the role set aside, as keepalived's
            # BACKUP would, then the engine stopped.
            node.manager.role = STANDBY
            node.controller.stop(timeout=10)
        servers.primary.drop_database(name)


def _wait_replayed(servers: Servers, name: str) -> None:
    """Until the standby has replayed all the primary wrote (the commit waited only for
    its flush)."""
    with psycopg.connect(
        host=str(servers.primary.socket_dir),
        port=servers.primary.port,
        user=USER,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    deadline = time.monotonic() + 30
    while not _replayed(servers, name, lsn):
        assert time.monotonic() < deadline, "the standby did not replay the primary's writes"
        time.sleep(0.05)


def _replayed(servers: Servers, name: str, lsn: str) -> bool:
    """Whether the standby replayed the primary's WAL up to `lsn` (not yet when the
    database is not there yet)."""
    try:
        with psycopg.connect(
            host=str(servers.standby.socket_dir),
            port=servers.standby.port,
            user=USER,
            dbname=name,
            autocommit=True,
        ) as conn:
            query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
            return bool(conn.execute(query, (lsn,)).fetchone()[0])
    except psycopg.OperationalError:
        return False


def _tenants(node: PairNode) -> set[str]:
    response = node.api.get("/v0/tenants")
    assert response.status_code == 200, response.text
    return {t["name"] for t in response.json()}


def _content(url: str) -> dict:
    return {t: r for t, r in without_local_account(all_rows(url)).items() if t not in VOLATILE}


def test_a_backup_of_the_standby_is_restored_on_the_active_by_the_orchestrators_client(
    pair: tuple[PairNode, PairNode], servers: Servers, tmp_path: Path
) -> None:
    active, standby = pair
    for name in ("kept-1", "kept-2"):
        assert active.api.post("/v0/tenants", json={"name": name}).status_code == 201
    _wait_replayed(servers, active.settings.database.url.rsplit("/", 1)[1])
    assert {"kept-1", "kept-2"} <= _tenants(standby)
    expected = _content(active.url)

    orchestrator = standby.client(), active.client()
    taken = orchestrator[0].take_backup()
    assert (taken["role"], taken["node"]) == ("STANDBY", "n2")
    assert [b["file"] for b in orchestrator[0].backups()] == [taken["file"]]
    assert active.api.post("/v0/tenants", json={"name": "after-backup"}).status_code == 201

    downloaded = orchestrator[0].download_backup(taken["file"], tmp_path)
    assert downloaded == tmp_path / taken["file"]
    assert sha256(downloaded.read_bytes()) == taken["sha256"]
    assert stat.S_IMODE(downloaded.stat().st_mode) == 0o600
    uploaded = orchestrator[1].upload_backup(downloaded, taken["sha256"])
    assert uploaded["sha256"] == taken["sha256"] and uploaded["node"] == "n2"

    # On the standby: refused naming the active; nothing changed.
    with pytest.raises(NodeApiError) as refused:
        orchestrator[0].restore(taken["file"])
    assert refused.value.status == 409
    assert "this node (n2, 198.18.99.12) is the standby of the pair, not its active" in str(
        refused.value
    )
    assert "restore on the active node n1 (198.18.99.11)" in str(refused.value)
    assert "after-backup" in _tenants(active)

    before_epoch = active.controller.lease.epoch
    result = orchestrator[1].restore(taken["file"])
    assert result["source_node"] == "n2" and result["schema"] == migrate.head_revision()
    assert result["signature"]["verified"] and result["rows"]["tenants"] == 2
    assert result["not_restored"] == [
        "users: 1 of the archive's 2 rows not restored (the escadm account is node-local: "
        "this node keeps its own, whose secret is its data/escadm.credential)"
    ]
    assert result["pair"]["node"] == "n1" and result["pair"]["standby"] == STANDBY_ADDRESS
    assert result["pair"]["epoch"] > before_epoch
    assert _content(active.url) == expected
    assert "after-backup" not in _tenants(active)
    _wait_replayed(servers, active.settings.database.url.rsplit("/", 1)[1])
    assert "after-backup" not in _tenants(standby) and "kept-1" in _tenants(standby)
    # The engine takes writes again on the restored data.
    assert active.api.post("/v0/tenants", json={"name": "after-restore"}).status_code == 201
    print(
        f"\nbackup on the standby {taken['seconds']:.3f} s ({taken['size']} bytes), restore "
        f"on the active {result['seconds']:.3f} s (engine paused {result['pair']['seconds']:.3f} s)"
    )


def test_a_projected_backup_is_restored_on_the_active(
    pair: tuple[PairNode, PairNode], tmp_path: Path
) -> None:
    """Written as of 0009 on the active, restored there by this release (migrated on)."""
    active, _ = pair
    assert active.api.post("/v0/tenants", json={"name": "at-0009"}).status_code == 201
    expected = _content(active.url)
    taken = active.client().take_backup(schema="0009")
    assert taken["schema"] == "0009"
    result = active.client().restore(taken["file"])
    assert result["schema"] == "0009" and "idempotency_keys" not in result["rows"]
    restored = _content(active.url)
    assert {t: r for t, r in restored.items() if t in result["rows"]} == {
        t: r for t, r in expected.items() if t in result["rows"]
    }


def test_a_download_damaged_on_the_node_is_refused_and_not_kept(
    pair: tuple[PairNode, PairNode], tmp_path: Path
) -> None:
    active, _ = pair
    taken = active.client().take_backup()
    path = active.home.backups / taken["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the disk's doing: its recorded sha256 no longer holds
    path.write_bytes(bytes(data))
    with pytest.raises(NodeApiError, match="the body's sha256 is"):
        active.client().download_backup(taken["file"], tmp_path)
    assert list(tmp_path.glob("*.tar.gz")) == [] and not list(tmp_path.glob(".*partial"))
    with pytest.raises(NodeApiError) as absent:
        active.client().download_backup("absent.tar.gz", tmp_path)
    assert absent.value.status == 404


def test_a_hostile_or_corrupt_archive_is_refused_on_the_active_changing_nothing(
    pair: tuple[PairNode, PairNode],
) -> None:
    active, _ = pair
    assert active.api.post("/v0/tenants", json={"name": "before"}).status_code == 201
    good = active.api.get(f"/esc/node/backups/{active.client().take_backup()['file']}").content
    members = archive_members(good)
    key = ensure_key(active.home)

    forged = dict(members)  # a holder of the key forging a row: checksums and MAC hold
    tenants = (
        members["data/tenants.tsv"]
        + b"00000000-0000-0000-0000-000000000001\t../evil\t2026-01-01 00:00:00+00\n"
    )
    manifest = json.loads(members["manifest.json"])
    manifest["tables"]["tenants"].update(
        bytes=len(tenants), sha256=sha256(tenants), rows=manifest["tables"]["tenants"]["rows"] + 1
    )
    forged["data/tenants.tsv"] = tenants
    forged["manifest.json"] = json.dumps(manifest, indent=1).encode()
    truncated = dict(members)
    truncated["data/users.tsv"] = members["data/users.tsv"][:-5]  # unsigned, damaged
    cases = {
        "forged.tar.gz": (rebuilt(forged, key), False, ["table tenants", "../evil"]),
        "damaged.tar.gz": (rebuilt(truncated, None), True, ["data/users.tsv", "the manifest says"]),
    }
    assert active.api.post("/v0/tenants", json={"name": "after"}).status_code == 201
    before = all_rows(active.url)
    for file, (body, unsigned, words) in cases.items():
        params = {"allow_unsigned": "true"} if unsigned else {}
        assert put(active.api, file, body, **params).status_code == 201
        if unsigned:
            plain = active.api.post("/esc/node/restore", json={"file": file})
            assert plain.status_code == 422 and "not signed" in plain.json()["detail"], plain.text
        refused = active.api.post(
            "/esc/node/restore", json={"file": file, "allow_unsigned": unsigned}
        )
        assert refused.status_code == 422, refused.text
        for word in words:
            assert word in refused.json()["detail"], (file, word, refused.text)
        now = all_rows(active.url)
        assert {t: r for t, r in now.items() if t not in VOLATILE} == {
            t: r for t, r in before.items() if t not in VOLATILE
        }
    db = Database(active.url, pool_size=1, max_overflow=0)
    try:
        with db.engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT nspname FROM pg_namespace")
            schemas = {r[0] for r in found}
    finally:
        db.dispose()
    assert "esc_restoring" not in schemas
    assert "after" in _tenants(active)


def test_a_restore_waits_for_a_synchronous_standby(
    pair: tuple[PairNode, PairNode], servers: Servers
) -> None:
    active, _ = pair
    file = active.client().take_backup()["file"]
    assert active.api.post("/v0/tenants", json={"name": "after"}).status_code == 201
    servers.synchronous(False)
    try:
        refused = active.api.post("/esc/node/restore", json={"file": file})
    finally:
        servers.synchronous(True)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert f"the standby {STANDBY_ADDRESS} is not UpToDate and synchronous" in detail
    assert "nothing was changed" in detail
    assert "after" in _tenants(active)
