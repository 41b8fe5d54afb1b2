"""`escadm restore`: the node's database replaced by a backup's, all or nothing.

Order, so that a refused or failed restore changes nothing:
1. the node's services must be stopped;
2. the archive's signature is checked against the node's backup key
   (signing.py), its manifest (format version), and the upgrade planner is
   asked whether this release takes a backup of that one;
3. a new database is built aside (SQLite: a file beside the node's;
   PostgreSQL: a schema `esc_restoring` in the node's database), migrated to
   the backup's schema revision, loaded (every member spooled and checked
   against its size, sha256 and row count before it is loaded: spool.py),
   migrated to this release's head, given the node's own escadm account,
   and its rows checked (invariants.py);
4. only then is it swapped in, atomically: SQLite by a rename over the
   node's file (the previous one is kept as a hard link `*.before-restore`),
   PostgreSQL by renaming schemas in one transaction (the previous data is
   kept as schema `esc_before_restore`).
A restore killed at any point leaves the node on its previous database;
running it again starts over (the leftover aside database is dropped).

On a node of an HA pair the database is the pair's running PostgreSQL, so
the node cannot be stopped for it: the restore runs on the active node, the
pair up and its standby in sync (`PairSwap.check`), and step 4 is the active
node's escmanager's (`PairSwap.swap`): it pauses its engine, swaps the
schemas in one transaction, which reaches the standby through replication
like any other commit, and takes the active role again on the restored data.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from esc.backup.archive import ArchiveError, ArchiveReader, Manifest
from esc.backup.compress import open_decompressed
from esc.backup.invariants import check_restored
from esc.backup.load import copy_local_account, load_all
from esc.backup.signing import (
    IMPORT_HINT,
    BackupKeyError,
    Verdict,
    load_key,
    verify,
    written_by_the_upgrade_of_its_node,
)
from esc.backup.spool import Spool
from esc.config import NodeHome, Settings
from esc.db.aside import ASIDE_SCHEMA, AsideError, mark_checked, new_token, swap_in
from esc.db.aside import KEPT_SCHEMA as KEPT_SCHEMA  # where the previous data is kept
from esc.db.migrate import is_known_revision, upgrade
from esc.db.session import Database
from esc.files import fsync_dir
from esc.node.processes import ALL_SERVICE_NAMES, SUPERVISOR, live_record
from esc.release.catalog import load_catalog
from esc.release.numbers import Change, ReleaseNumber, ReleaseNumberError
from esc.release.planner import plan_upgrade
from esc.release.procedures import Method
from esc.version import CURRENT

ASIDE_SUFFIX = ".restoring"
KEPT_SUFFIX = ".before-restore"


class RestoreError(Exception):
    """The restore is refused or failed; the node's database is unchanged."""


class ArchiveRefused(RestoreError):
    """The archive itself is refused: unreadable, damaged or altered, not signed as
    required, of a release or schema this release does not take."""


class SwapOutcomeUnknown(RestoreError):
    """The active node was asked to swap the restored data in and did not confirm that
    it runs on it: it did not answer (the swap is one transaction: the database is the
    old one or the new one), or it swapped and could not resume (the message says)."""


class PairSwap(Protocol):
    """How a restore on a node of an HA pair reaches the node's running escmanager."""

    def check(self) -> None:
        """Raise RestoreError unless this node may restore now: it is the active node
        of the pair, and its standby is UpToDate and synchronous."""

    def swap(self, token: str) -> dict[str, Any]:
        """Have the active node swap in the aside schema marked by `token` and take the
        active role again on it; RestoreError when it refused (nothing was changed),
        SwapOutcomeUnknown when it did not answer."""


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    rows: dict[str, int]
    seconds: float
    signature: Verdict
    # Why an archive whose signature was not verified was accepted (None: it was).
    unverified_because: str | None = None
    # On a node of a pair: what its active node reported of the swap (PairSwap.swap).
    pair: dict[str, Any] | None = None


def not_restored(manifest: Manifest, rows: dict[str, int]) -> list[str]:
    """Why the archive's row count and the restored one differ, table by table."""
    from esc.backup.load import NOT_RESTORED

    lines = []
    for table, entry in manifest.tables.items():
        missing = entry.rows - rows.get(table, 0)
        if missing:
            why = NOT_RESTORED.get(table, "refused by the load")
            lines.append(
                f"{table}: {missing} of the archive's {entry.rows} rows not restored ({why})"
            )
    return lines


def result_document(result: RestoreResult, file: str, op_mode: str) -> dict[str, Any]:
    """A restore's result as `escadm restore --json` and the node API answer it;
    `op_mode`: the restored database's."""
    manifest = result.manifest
    return {
        "file": file,
        "source_version": manifest.product_version,
        "source_node": manifest.source_node,
        "created_at": manifest.created_at,
        "schema": manifest.schema_revision,
        "rows": result.rows,
        "rows_in_archive": {table: entry.rows for table, entry in manifest.tables.items()},
        "not_restored": not_restored(manifest, result.rows),
        "signature": {
            "verified": result.signature.verified,
            "summary": result.signature.summary,
            "unverified_because": result.unverified_because,
        },
        "op_mode": op_mode,
        "seconds": round(result.seconds, 3),
        "pair": result.pair,
    }


def the_active_node(db: Database, me: str, peer: str) -> str:
    """The pair's active node as this node's database knows it (the lease's holder),
    for a refusal on a node that is not it: `me` is this node's name, `peer` the other
    node's address."""
    from urllib.parse import urlsplit

    from esc.engine.lease import holder

    with db.read() as session:
        known = holder(session)
    if known and known[0] != me:
        where = urlsplit(known[1]).hostname or known[1]
        return f"the active node {known[0]} ({where})"
    return f"the pair's active node (the peer is {peer})"


def require_stopped(home: NodeHome) -> None:
    running = [n for n in (SUPERVISOR, *ALL_SERVICE_NAMES) if live_record(home.run, n)]
    if running:
        raise RestoreError(f"ESC is running ({', '.join(running)}): stop ESC first: escadm stop")


def check_source(manifest: Manifest, vim: str) -> None:
    """May this release take a backup written by the manifest's release?"""
    try:
        source = ReleaseNumber.parse(manifest.product_version)
    except ReleaseNumberError as exc:
        raise ArchiveRefused(f"the backup names no valid release: {exc}") from None
    if source == CURRENT:
        return
    plan = plan_upgrade(load_catalog(), source, CURRENT, vim, ha=False)
    if plan.change is Change.DOWNGRADE:
        raise ArchiveRefused(
            f"the backup was written by ESC {source}, newer than this ESC {CURRENT}: restore "
            f"it on ESC {source} or newer"
        )
    if not plan.allowed or Method.BACKUP_RESTORE not in plan.methods:
        raise ArchiveRefused(
            f"ESC {CURRENT} does not restore a backup of ESC {source}: {plan.reason}; "
            f"next: {plan.next_step}"
        )


def check_revision(manifest: Manifest) -> None:
    if not is_known_revision(manifest.schema_revision):
        raise ArchiveRefused(
            f"the backup's schema revision {manifest.schema_revision!r} is not one this "
            f"release knows: it was written by a newer or unrelated release"
        )


def check_signature(
    home: NodeHome, archive: Path, reader: ArchiveReader, allow_unsigned: bool
) -> tuple[Verdict, str | None]:
    """The signature's verdict, and why an unverified archive is accepted anyway."""
    try:
        key = load_key(home)
    except BackupKeyError as exc:
        raise RestoreError(f"{exc}; nothing was changed") from None
    verdict = verify(key, reader.manifest_bytes, reader.signature)
    if verdict.verified:
        return verdict, None
    if allow_unsigned:
        return verdict, "--allow-unsigned was given"
    if written_by_the_upgrade_of_its_node(home, archive):
        return verdict, f"it was written by the upgrade of the node at {archive.parent.parent}"
    raise ArchiveRefused(
        f"{archive}: refused: {verdict.summary}; {IMPORT_HINT}; nothing was changed"
    )


def restore(
    home: NodeHome,
    settings: Settings,
    archive: Path,
    allow_unsigned: bool = False,
    pair: PairSwap | None = None,
) -> RestoreResult:
    """Replace the node's database with the archive's; an archive not signed by this
    node's backup key only with allow_unsigned (see signing.py). A node of an HA pair
    gives `pair`: it restores running, through its escmanager."""
    started = time.monotonic()
    if pair is None:
        require_stopped(home)
    else:
        pair.check()
    if not archive.is_file():
        raise RestoreError(f"no backup file {archive}: check the path")
    url = home.database_url(settings)
    if pair is not None and make_url(url).get_backend_name() != "postgresql":
        raise RestoreError(
            "a node of an HA pair restores into its PostgreSQL: check [database] url"
        )
    try:
        stream = open_decompressed(str(archive))
    except OSError as exc:
        raise RestoreError(f"cannot read {archive}: {exc.strerror or exc}") from None
    with contextlib.closing(stream):
        try:
            reader = ArchiveReader(stream)
            manifest = reader.manifest
        except (ArchiveError, OSError, EOFError) as exc:
            raise ArchiveRefused(f"{archive}: {exc}; nothing was changed") from None
        verdict, unverified_because = check_signature(home, archive, reader, allow_unsigned)
        check_source(manifest, settings.vim.driver)
        check_revision(manifest)
        aside = _Aside.for_url(url)
        try:
            rows = aside.build(reader, manifest, Spool(home.data, settings.backup.max_spool_bytes))
        except (ArchiveError, OSError, EOFError) as exc:
            aside.discard()
            raise ArchiveRefused(f"{archive}: {exc}; the node's database is unchanged") from None
        except (SQLAlchemyError, psycopg.Error, sqlite3.Error, CommandError) as exc:
            aside.discard()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArchiveRefused(
                f"{archive}: its data does not load ({first}): the archive is damaged or "
                "altered; the node's database is unchanged"
            ) from None
        except BaseException:
            aside.discard()  # whatever went wrong, nothing half-built stays behind
            raise
    if pair is None:
        aside.swap()
        swapped: dict[str, Any] | None = None
    else:
        try:
            swapped = pair.swap(aside.token)
        except SwapOutcomeUnknown:
            raise  # it may be swapping still: its aside schema is not this process's to drop
        except BaseException:
            aside.discard()
            raise
    return RestoreResult(
        manifest, rows, time.monotonic() - started, verdict, unverified_because, swapped
    )


class _Aside(abc.ABC):
    """The database built beside the node's, and how it replaces it."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Names this restore's aside data, once checked, to whoever swaps it in.
        self.token = new_token()

    @staticmethod
    def for_url(url: str) -> _Aside:
        if make_url(url).get_backend_name() == "postgresql":
            return _PostgresAside(url)
        return _SqliteAside(url)

    @abc.abstractmethod
    def engine(self) -> Engine:
        """An engine on the aside database."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """An empty aside database (dropping one a killed restore left)."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Remove the aside database after a failure."""

    @abc.abstractmethod
    def swap(self) -> None:
        """Put the aside database in the node's place, atomically."""

    @abc.abstractmethod
    def seal(self, engine: Engine) -> None:
        """Mark the aside database complete and checked (before it may be swapped in)."""

    def build(self, reader: ArchiveReader, manifest: Manifest, spool: Spool) -> dict[str, int]:
        self.prepare()
        engine = self.engine()
        try:
            with engine.begin() as connection:
                upgrade(connection, manifest.schema_revision)
            with engine.begin() as connection:
                rows = load_all(connection, reader, spool)
            with engine.begin() as connection:
                upgrade(connection, "head")
            current = Database(self.url, pool_size=1, max_overflow=0)
            try:
                with current.engine.connect() as source, engine.begin() as target:
                    copy_local_account(source, target)
            finally:
                current.dispose()
            with engine.connect() as connection:
                check_restored(connection)
            self.seal(engine)
        finally:
            engine.dispose()
        return rows


class _SqliteAside(_Aside):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        database = make_url(url).database
        if not database:
            raise RestoreError("the node's SQLite database has no file name in [database] url")
        self.path = Path(database)
        self.aside = self.path.with_name(self.path.name + ASIDE_SUFFIX)
        self.kept = self.path.with_name(self.path.name + KEPT_SUFFIX)

    def prepare(self) -> None:
        self.discard()  # what a restore killed earlier left

    def seal(self, engine: Engine) -> None:
        """Nothing to mark: only this process renames the file, right after the checks."""

    def discard(self) -> None:
        for leftover in _sqlite_files(self.aside):
            leftover.unlink(missing_ok=True)

    def engine(self) -> Engine:
        engine = Database(f"sqlite:///{self.aside}", pool_size=1, max_overflow=0).engine

        @event.listens_for(engine, "connect")
        def _references_checked_after_the_load(dbapi_connection: Any, _record: Any) -> None:
            # So that a dangling reference is reported with its table and row by
            # check_restored(), not as SQLite's bare "FOREIGN KEY constraint failed".
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")

        return engine

    def swap(self) -> None:
        if self.path.exists():
            # Fold the node's write-ahead log into its file, so the kept copy is whole.
            current = create_engine(f"sqlite:///{self.path}")
            try:
                with current.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                current.dispose()
            for stale in _sqlite_files(self.kept):
                stale.unlink(missing_ok=True)
            os.link(self.path, self.kept)
        os.replace(self.aside, self.path)  # atomic: the node sees old or new, never a mix
        for stale in _sqlite_files(self.path)[1:]:
            stale.unlink(missing_ok=True)  # the old file's empty -wal/-shm
        fsync_dir(self.path.parent)


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


class _PostgresAside(_Aside):
    def _run(self, *statements: str) -> None:
        admin = create_engine(self.url)
        try:
            with admin.begin() as connection:  # DDL is transactional: all or none
                for statement in statements:
                    connection.exec_driver_sql(statement)
        finally:
            admin.dispose()

    def prepare(self) -> None:
        self._run(f"DROP SCHEMA IF EXISTS {ASIDE_SCHEMA} CASCADE", f"CREATE SCHEMA {ASIDE_SCHEMA}")

    def discard(self) -> None:
        self._run(f"DROP SCHEMA IF EXISTS {ASIDE_SCHEMA} CASCADE")

    def engine(self) -> Engine:
        return create_engine(self.url, connect_args={"options": f"-c search_path={ASIDE_SCHEMA}"})

    def seal(self, engine: Engine) -> None:
        with engine.begin() as connection:
            mark_checked(connection, self.token)

    def swap(self) -> None:
        admin = create_engine(self.url)
        try:
            with admin.begin() as connection:  # DDL is transactional: all or none
                swap_in(connection, self.token, keep_lease=False)
        except AsideError as exc:
            raise RestoreError(f"{exc}; the node's database is unchanged") from None
        finally:
            admin.dispose()
