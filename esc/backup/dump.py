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

As of which schema revision: the database's own, whatever this release's head
(a new release's standby replicating an older primary holds the older schema);
or, asked for, an older revision of this release's migration history, when
every migration after it up to the database's is an expand (only additions):
the archive then holds only the tables and columns that revision has
(tables.tables_at), which is what the restore of a release of that revision
loads. A database ahead of this release's head that it may run on
(expand-only beyond it, esc.db.schema_compat) is written as of this head.
"""

from __future__ import annotations

import contextlib
import errno
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

from alembic.script import Script, ScriptDirectory
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
from esc.backup.tables import column_kinds, quoted, tables_at
from esc.db.migrate import head_revision, script_directory
from esc.db.schema_compat import CONTRACT, Fit, assess, is_at_or_below, is_known, not_expand_after
from esc.db.session import Database
from esc.files import fsync_dir
from esc.release.numbers import ReleaseNumber, ReleaseNumberError
from esc.version import CURRENT

NOTES = (
    "Holds the users' scrypt password hashes (not passwords) and callback URLs as "
    "configured: keep it as private as the database. The node-local escadm account is "
    "not restored from it."
)


class BackupError(Exception):
    """The backup cannot be made; the message says why and what to do."""


class BackupExists(BackupError):
    """The file asked for exists and replacing it was not asked for."""


class BackupRequestError(BackupError):
    """What was asked for is not valid: a revision this release does not know, a release
    that is not an older one."""


class BackupRefused(BackupError):
    """The database cannot be written as asked: as of a revision it is not past, or past
    a migration that is not an expand, or a schema this release cannot read."""


class NoRoom(BackupError):
    """The file system of the archive lacks the room it needs."""


# Room left free beside a backup for the node's own files (its log, the database).
ROOM_RESERVE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest
    size: int
    seconds: float
    database_revision: str = ""  # the database's (the manifest's may be older)


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[Connection]:
    """A connection reading the whole database as of one moment."""
    with db.engine.connect() as connection:
        # SQLite: a deferred transaction; its first read fixes the snapshot (WAL).
        transaction = connection.begin()
        try:
            if db.backend == "postgresql":
                # Said in the transaction, not as the connection's execution options: those
                # are reset when the connection goes back to its pool, to READ WRITE, which
                # every later transaction on it would then ask for, and a hot standby refuses.
                connection.exec_driver_sql(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
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
    db: Database,
    path: Path,
    node_name: str,
    key: bytes | None = None,
    force: bool = False,
    *,
    schema: str | None = None,
    for_release: str | None = None,
) -> BackupResult:
    """Write the archive to `path` (its name chooses the compression), signed with
    `key` if one is given (signing.py); an existing file is replaced only with force.

    `schema`: the revision to write it as of (else the database's, see the module's
    doc). `for_release`: an older release the archive is meant for: its manifest names
    that release, whose restore refuses an archive of a newer one (the notes name the
    release that wrote it)."""
    started = time.monotonic()
    compression = compression_for(path.name)
    release = _release_for(for_release)
    path = path.absolute()
    if not path.parent.is_dir():
        raise BackupError(f"directory {path.parent} does not exist: create it or choose another")
    if path.exists() and not force:
        raise BackupExists(f"{path} exists: choose another file, or add --force to replace it")
    check_room(db, path.parent)
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        found, manifest = _dump(db, workdir, node_name, schema, release)
        _write_archive(path, workdir, manifest, compression, key)
    except OSError as exc:
        kind = NoRoom if exc.errno in (errno.ENOSPC, errno.EDQUOT) else BackupError
        raise kind(f"cannot write {path}: {exc.strerror or exc}; nothing was kept") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return BackupResult(path, manifest, path.stat().st_size, time.monotonic() - started, found)


def _release_for(for_release: str | None) -> str:
    if for_release is None:
        return __version__
    try:
        release = ReleaseNumber.parse(for_release)
    except ReleaseNumberError as exc:
        raise BackupRequestError(f"for_release: {exc}") from None
    if release > CURRENT:
        raise BackupRequestError(
            f"for_release {release} is newer than this ESC {CURRENT}: a newer release "
            "restores this release's archives as they are; name an older release or none"
        )
    return str(release)


def database_bytes(db: Database) -> int:
    """The database's size: what its rows take at most, uncompressed, in an archive."""
    with db.engine.connect() as connection:
        if db.backend == "postgresql":
            return int(
                connection.execute(text("SELECT pg_database_size(current_database())")).scalar()
            )
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        size = connection.exec_driver_sql("PRAGMA page_size").scalar()
        return int(pages) * int(size)


def room_needed(database: int) -> int:
    """Bytes a backup of a database of `database` bytes needs beside it: the rows spooled
    uncompressed, then the archive (at most as large) while the rows are still there,
    and the reserve left to the node."""
    return 2 * database + ROOM_RESERVE_BYTES


def check_room(db: Database, directory: Path) -> None:
    """NoRoom, before anything is written, when `directory` lacks the room a backup needs."""
    database = database_bytes(db)
    free = shutil.disk_usage(directory).free
    needed = room_needed(database)
    if free < needed:
        raise NoRoom(
            f"{directory} has {free} bytes free, a backup of this database ({database} bytes) "
            f"needs up to {needed} (its rows, then the archive, and "
            f"{ROOM_RESERVE_BYTES // 2**20} MiB left to the node): free room there (old "
            "backups, packages), then take it again; nothing was written"
        )


def _dump(
    db: Database, workdir: Path, node_name: str, schema: str | None, release: str
) -> tuple[str, Manifest]:
    entries: dict[str, TableEntry] = {}
    with snapshot(db) as connection:
        found, revision = archive_revision(connection, schema)
        for table in tables_at(revision):
            with open(workdir / f"{table.name}.rows", "wb", buffering=1 << 20) as out:
                entries[table.name] = _dump_table(connection, db.backend, table, out)
    notes = NOTES
    if revision != head_revision() or release != __version__:
        notes += (
            f" Written by ESC {__version__} as of schema revision {revision} (the database's "
            f"is {found}), for ESC {release} or newer."
        )
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        product_version=release,
        schema_revision=revision,
        created_at=datetime.now(UTC).isoformat(),
        source_node=node_name,
        backend=db.backend,
        tables=entries,
        notes=notes,
    )
    return found, manifest


def archive_revision(
    connection: Connection, requested: str | None = None, scripts: ScriptDirectory | None = None
) -> tuple[str, str]:
    """(the database's schema revision, the one an archive of it is written as of):
    `requested`, else the database's own (this release's head for a newer schema this
    release may run on), by this release's migrations or `scripts`. BackupRefused or
    BackupRequestError say why not."""
    head = head_revision() if scripts is None else scripts.get_current_head() or ""
    scripts = scripts or script_directory()
    state = assess(connection, scripts, head)
    found = state.revision
    if found is None:
        raise BackupRefused(
            "the database has no schema revision (no alembic_version row): it was never "
            "migrated, there is nothing to back up"
        )
    if state.fit is Fit.AHEAD_INCOMPATIBLE:
        raise BackupRefused(f"{state.refusal()}; back up with that release")
    if requested is None:
        return found, head if state.fit is Fit.AHEAD_COMPATIBLE else found
    if not is_known(scripts, requested):
        raise BackupRequestError(
            f"schema revision {requested!r} is not one of this release's migrations "
            f"(they end at {head}): name one of them"
        )
    if state.fit is Fit.AHEAD_COMPATIBLE:
        # Beyond this head only the newer release's record tells: compatible from its
        # newest contract migration, which must be at or below the revision asked for.
        floor = state.compatible_from or ""
        if not is_at_or_below(scripts, floor, requested):
            raise BackupRefused(
                f"the database's schema {found} is compatible only from revision {floor} "
                f"(a contract migration), after {requested}: the data as revision "
                f"{requested} had it is not all in the database any more; back up as of "
                f"{floor} or later"
            )
        return found, requested
    if not is_at_or_below(scripts, requested, found):
        raise BackupRefused(
            f"schema revision {requested} is newer than the database's {found}: an archive "
            f"holds what the database has; back up as of {found} or an older revision"
        )
    blocking = not_expand_after(scripts, requested, found)
    if blocking:
        named = "; ".join(_why_blocking(s, requested) for s in blocking)
        raise BackupRefused(
            f"the database's schema {found} cannot be written as of revision {requested}: "
            f"{named}; back up as of {blocking[0].revision} or later"
        )
    return found, requested


def _why_blocking(script: Script, requested: str) -> str:
    where = f"migration {script.revision} ({Path(script.path).name})"
    if getattr(script.module, "esc_kind", None) == CONTRACT:
        return f"{where} is a contract migration: it removed or changed what {requested} had"
    return f"{where} declares no valid esc_kind: whether it kept what {requested} had is not known"


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
