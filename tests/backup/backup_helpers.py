"""What the backup tests share: more nodes on a chosen backend, every row of every
table, the state a failed restore must not touch, and archives taken apart and
written again by hand."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Node, Rows, all_rows, fast_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from esc.backup.archive import member_name
from esc.backup.restore import ASIDE_SCHEMA, ASIDE_SUFFIX
from esc.backup.signing import ensure_key, store_key
from esc.config import NodeHome
from esc.db.session import Database
from esc.node.setup import init_node


def backend_of(node: Node) -> str:
    return make_url(url_of(node)).get_backend_name()


def url_of(node: Node) -> str:
    return node.home.database_url(node.settings)


# More nodes -----------------------------------------------------------------------


class NodeMaker:
    """Initialised nodes in homes of their own, each with its own database."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp_path = tmp_path
        self.request = request
        self.databases: list[str] = []

    def __call__(self, backend: str, name: str) -> Node:
        if backend == "sqlite":
            url = f"sqlite:///{self.tmp_path / f'{name}.db'}"
        else:
            server = self.request.getfixturevalue("postgres")
            database = f"esc_{uuid.uuid4().hex[:12]}"
            url = server.create_database(database)
            self.databases.append(database)
        home = NodeHome(self.tmp_path / name)
        settings = fast_settings(url)
        result = init_node(home, settings)
        return Node(home, settings, result.admin_password or "")

    def cleanup(self) -> None:
        if self.databases:
            server = self.request.getfixturevalue("postgres")
            for database in self.databases:
                server.drop_database(database)


@pytest.fixture(name="make_node")
def make_node_fixture(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeMaker]:
    """make_node(backend, name): a new initialised node (import this into a test module)."""
    maker = NodeMaker(tmp_path, request)
    yield maker
    maker.cleanup()


def carry_key(source: Node, target: Node) -> None:
    """What an operator does with escadm backup-key export and import."""
    store_key(target.home, ensure_key(source.home))


def user_hash(url: str, name: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT password_hash FROM users WHERE name = :n"), {"n": name}
            ).scalar_one()
    finally:
        engine.dispose()


def counts(rows: Rows) -> dict[str, int]:
    return {name: len(table) for name, table in rows.items()}


# What a failed restore must leave as it was -------------------------------------------


def sqlite_path(url: str) -> Path:
    return Path(make_url(url).database or "")


def checkpoint(url: str) -> None:
    """Fold a SQLite database's write-ahead log into its file (so its bytes are its state)."""
    if make_url(url).get_backend_name() != "sqlite":
        return
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()


def schemas(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(
                connection.execute(
                    text("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%'")
                ).scalars()
            )
    finally:
        engine.dispose()


def aside_tables(url: str) -> int:
    """PostgreSQL: how many tables the aside schema of a restore holds (0: none)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = :s"), {"s": ASIDE_SCHEMA}
            ).scalar_one()
    finally:
        engine.dispose()


def sqlite_aside(url: str) -> Path:
    path = sqlite_path(url)
    return path.with_name(path.name + ASIDE_SUFFIX)


@dataclass
class DatabaseState:
    """All rows, and on SQLite the file's bytes, on PostgreSQL the schemas."""

    rows: Rows
    digest: str | None = None
    schemas: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, url: str) -> DatabaseState:
        rows = all_rows(url)
        if make_url(url).get_backend_name() == "sqlite":
            checkpoint(url)
            path = sqlite_path(url)
            return cls(rows, digest=hashlib.sha256(path.read_bytes()).hexdigest())
        return cls(rows, schemas=schemas(url))

    def assert_unchanged(self, url: str) -> None:
        """The database is as it was, and no restore left anything aside."""
        if self.digest is not None:
            path = sqlite_path(url)
            # Hashed before anything opens the database again.
            assert hashlib.sha256(path.read_bytes()).hexdigest() == self.digest
            leftovers = [p.name for p in path.parent.iterdir() if ASIDE_SUFFIX in p.name]
            assert leftovers == []
        else:
            assert schemas(url) == self.schemas
            assert ASIDE_SCHEMA not in self.schemas
        assert all_rows(url) == self.rows


# Archives by hand --------------------------------------------------------------------


@dataclass
class Archive:
    """A backup taken apart: its manifest (as JSON) and its data members, in order."""

    manifest: dict[str, Any]
    members: list[tuple[str, bytes]]

    @classmethod
    def read(cls, path: Path) -> Archive:
        with tarfile.open(path, "r:*") as tar:
            names = tar.getnames()
            assert names[0] == "manifest.json"
            manifest = json.loads(_member(tar, "manifest.json"))
            members = [(name, _member(tar, name)) for name in names[1:]]
        return cls(manifest, members)

    def content(self, table: str) -> bytes:
        return dict(self.members)[member_name(table)]

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest, indent=1).encode()

    def entries(self) -> list[tuple[tarfile.TarInfo, bytes | None]]:
        """The archive as it was: manifest first, then the data members."""
        return [regular("manifest.json", self.manifest_bytes())] + [
            regular(name, data) for name, data in self.members
        ]

    def replaced(self, table: str, data: bytes, recompute: bool) -> Archive:
        """This archive with one table's member replaced; its manifest entry recomputed
        (a forger's archive) or not (a damaged one)."""
        name = member_name(table)
        manifest = json.loads(json.dumps(self.manifest))
        if recompute:
            entry = manifest["tables"][table]
            entry["bytes"] = len(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["rows"] = data.count(b"\n")
        members = [(n, data if n == name else d) for n, d in self.members]
        return Archive(manifest, members)


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    stream = tar.extractfile(name)
    assert stream is not None
    return stream.read()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, 1_700_000_000
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o600
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, None


def write_tar(
    path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], compression: str = ""
) -> Path:
    """A tar of exactly these entries (compression: "", "bz2", "gz" or "xz")."""
    with tarfile.open(path, f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def huge_header(name: str, size: int) -> bytes:
    """A tar header declaring `size` bytes (a PAX size record), without the bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, 1_700_000_000
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """The members' blocks, without the end-of-archive blocks (to append more by hand)."""
    out = io.BytesIO()
    for info, data in entries:
        out.write(info.tobuf(format=tarfile.PAX_FORMAT))
        if data:
            out.write(padded(data))
    return out.getvalue()


def end_of_archive() -> bytes:
    return b"\0" * (2 * tarfile.BLOCKSIZE)


def open_database(node: Node) -> Database:
    return Database(url_of(node), pool_size=2, max_overflow=2)
