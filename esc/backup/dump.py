"""`escadm backup`: an online, consistent archive of the node's database.

Consistent: every table is read inside one read-only transaction, so the
archive is the database at one moment even while transactions run
(PostgreSQL: REPEATABLE READ; SQLite: one read transaction under WAL).
Fast where the data is large: PostgreSQL writes the rows in the archive's
format itself (COPY ... TO STDOUT, see copytext.py), SQLite rows are
formatted without decoding their JSON columns; compression runs on every
core (compress.py).

Written beside the target as a hidden partial file, mode 0600, fsynced and
renamed into place: a crash leaves no half archive under the asked name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Table, text

from esc import __version__
from esc.backup.archive import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    Manifest,
    TableEntry,
    compression_for,
    member_name,
)
from esc.backup.compress import ParallelCompressedWriter
from esc.backup.copytext import CANONICAL_SETTINGS, field_writer
from esc.backup.signing import signature_for
from esc.backup.tables import backed_up_tables, column_kinds, quoted
from esc.db.migrate import head_revision
from esc.db.session import Database
from esc.files import fsync_dir

NOTES = (
    "Holds the users' scrypt password hashes (not passwords) and callback URLs as "
    "configured: keep it as private as the database. The node-local escadm account is "
    "not restored from it."
)


class BackupError(Exception):
    """The backup cannot be made; the message says why and what to do."""


class BackupExists(BackupError):
    """The file asked for exists and replacing it was not asked for."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest
    size: int
    seconds: float


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A connection reading the whole database as of one moment."""
    with db.engine.connect() as connection:
        if db.backend == "postgresql":
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        # SQLite: a deferred transaction; its first read fixes the snapshot (WAL).
        transaction = connection.begin()
        try:
            if db.backend == "postgresql":
                # The canonical forms of copytext.py, whatever the server's defaults.
                for setting in CANONICAL_SETTINGS:
                    connection.exec_driver_sql(f"SET LOCAL {setting}")
            yield connection
        finally:
            transaction.rollback()


def _names(columns: Any) -> str:
    return quoted([c.name for c in columns])


def _select(table: Table) -> str:
    return (
        f'SELECT {_names(table.columns)} FROM "{table.name}" '
        f"ORDER BY {_names(table.primary_key.columns)}"
    )


def _batched(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Pieces of about a MiB: one checksum update and one write each, not one per row."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        if len(buffer) >= 1 << 20:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _sqlite_rows(connection: Connection, table: Table) -> Iterator[bytes]:
    kinds = column_kinds(table)
    writers = [field_writer(kinds[c.name]) for c in table.columns]
    for row in connection.exec_driver_sql(_select(table)):
        fields = [write(value) for write, value in zip(writers, row, strict=True)]
        yield ("\t".join(fields) + "\n").encode()


def _postgresql_rows(connection: Connection, table: Table) -> Iterator[bytes]:
    """The server writes the rows in the archive's format itself (the session's
    settings, set by snapshot(), make its values canonical)."""
    cursor = connection.connection.driver_connection.cursor()
    with cursor.copy(f"COPY ({_select(table)}) TO STDOUT") as copy:
        for block in copy:  # a row per block
            yield bytes(block)


def _dump_table(connection: Connection, backend: str, table: Table, out: IO[bytes]) -> TableEntry:
    digest = hashlib.sha256()
    size = rows = 0
    produce = _postgresql_rows if backend == "postgresql" else _sqlite_rows
    for data in _batched(produce(connection, table)):
        digest.update(data)
        out.write(data)
        size += len(data)
        rows += data.count(b"\n")
    return TableEntry(
        columns=[c.name for c in table.columns], rows=rows, bytes=size, sha256=digest.hexdigest()
    )


def write_backup(
    db: Database, path: Path, node_name: str, key: bytes | None = None, force: bool = False
) -> BackupResult:
    """Write the archive to `path` (its name chooses the compression), signed with
    `key` if one is given (signing.py); an existing file is replaced only with force."""
    started = time.monotonic()
    compression = compression_for(path.name)
    path = path.absolute()
    if not path.parent.is_dir():
        raise BackupError(f"directory {path.parent} does not exist: create it or choose another")
    if path.exists() and not force:
        raise BackupExists(f"{path} exists: choose another file, or add --force to replace it")
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        manifest = _dump(db, workdir, node_name)
        _write_archive(path, workdir, manifest, compression, key)
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return BackupResult(path, manifest, path.stat().st_size, time.monotonic() - started)


def _dump(db: Database, workdir: Path, node_name: str) -> Manifest:
    entries: dict[str, TableEntry] = {}
    with snapshot(db) as connection:
        revision = _revision(connection)
        for table in backed_up_tables():
            with open(workdir / f"{table.name}.rows", "wb", buffering=1 << 20) as out:
                entries[table.name] = _dump_table(connection, db.backend, table, out)
    return Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        product_version=__version__,
        schema_revision=revision,
        created_at=datetime.now(UTC).isoformat(),
        source_node=node_name,
        backend=db.backend,
        tables=entries,
        notes=NOTES,
    )


def _revision(connection: Connection) -> str:
    found = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    head = head_revision()
    if found != head:
        raise BackupError(
            f"the database schema is at revision {found}, this release writes backups of "
            f"{head}: start the node once with this release (it migrates), or back up with "
            "the release that runs it"
        )
    return found


def _write_archive(
    path: Path, workdir: Path, manifest: Manifest, compression: str, key: bytes | None
) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = int(time.time())
    with os.fdopen(fd, "wb") as raw:
        writer = ParallelCompressedWriter(raw, compression)
        try:
            stream: Any = writer  # tarfile only calls write() on it
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                data = manifest.model_dump_json(indent=1).encode()
                tar.addfile(_info(MANIFEST, len(data), now), io.BytesIO(data))
                if key is not None:
                    signature = signature_for(key, data)
                    tar.addfile(_info(SIGNATURE, len(signature), now), io.BytesIO(signature))
                for table, entry in manifest.tables.items():
                    with open(workdir / f"{table}.rows", "rb") as member:
                        tar.addfile(_info(member_name(table), entry.bytes, now), member)
            writer.close()
        except BaseException:
            writer.abort()
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info
