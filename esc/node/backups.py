"""The backups a node keeps of its database (the node API's /esc/node/backups), in its
home's backups/ beside the package store: the directory mode 0700, each archive 0600.

An orchestrator that reaches the node only over the network takes one here (the
writer of `escadm backup`, signed with the node's backup key, on the active or a
standby alike), lists, downloads and deletes them, and uploads one taken on another
node to restore it here (`restore_backup`, as `escadm restore` does). An upload is
received as esc.node.uploads receives every file: checked whole, then as an archive
(its manifest readable and signed by this node's backup key, as `escadm restore`
requires unless it is allowed unsigned), and only then renamed into place.

Beside each archive NAME, NAME.json keeps its sha256 and what its manifest says, so a
listing reads no archive; an archive without it (a crash between the rename and it)
is read when asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esc.backup import dump
from esc.backup.archive import COMPRESSION_BY_SUFFIX, ArchiveError, ArchiveReader, Manifest
from esc.backup.compress import open_decompressed
from esc.backup.dump import (
    BackupError,
    BackupRefused,
    BackupRequestError,
    BackupResult,
    NoRoom,
    write_backup,
)
from esc.backup.restore import (
    ArchiveRefused,
    RestoreError,
    restore,
    result_document,
    the_active_node,
)
from esc.backup.signing import BackupKeyError, ensure_key, load_key, verify
from esc.config import NodeHome, Settings
from esc.db.session import Database
from esc.engine import op_mode
from esc.errors import Conflict, InsufficientStorage, InvalidRequest, NotFound
from esc.files import fsync_dir, write_atomic
from esc.ha.role_record import ACTIVE, STANDBY
from esc.node.uploads import Received, refused_by_disk

_SUFFIXES = "|".join(re.escape(s) for s in COMPRESSION_BY_SUFFIX)
BACKUP_FILE_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}({_SUFFIXES})$"
BACKUP_FILE_FORM = f"NAME followed by one of {', '.join(COMPRESSION_BY_SUFFIX)}"
# gzip: a backup taken here is written and read fastest so (docs/backup.md measures it).
TAKEN_SUFFIX = ".tar.gz"
# A bound, not a size: an archive of a large node is some GiB; anything larger is not one.
MAX_BACKUP_BYTES = 64 * 2**30
SIDECAR = ".json"

# One restore at a time on a node: they would build their data in the same place.
_RESTORING = threading.Lock()

log = logging.getLogger("esc.node.backups")


@dataclass(frozen=True)
class Backup:
    file: str
    sha256: str
    size: int
    schema: str  # the revision the archive is written as of
    taken_at: str
    node: str  # the node it was taken on
    release: str  # the release its manifest names


def check_name(file: str) -> None:
    if not re.fullmatch(BACKUP_FILE_PATTERN, file):
        raise InvalidRequest(
            f"{file!r} is not the name of a backup here: name it {BACKUP_FILE_FORM}, of "
            "letters, digits, '.', '_' and '-' (e.g. esc-1-20261202T020000Z.tar.gz)"
        )


def read_manifest(path: Path) -> tuple[Manifest, bytes, bytes | None]:
    """The archive's manifest, its bytes and its signature; ArchiveError when unreadable."""
    try:
        stream = open_decompressed(str(path))
    except OSError as exc:
        raise ArchiveError(f"cannot read it: {exc.strerror or exc}") from None
    with contextlib.closing(stream):
        try:
            reader = ArchiveReader(stream)
        except (OSError, EOFError) as exc:
            raise ArchiveError(f"the archive is truncated or damaged: {exc}") from None
        try:
            return reader.manifest, reader.manifest_bytes, reader.signature
        finally:
            reader.close()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as archive:
        return hashlib.file_digest(archive, "sha256").hexdigest()


class BackupStore:
    def __init__(self, home: NodeHome) -> None:
        self.home = home
        self.directory = home.backups

    def _sidecar(self, file: str) -> Path:
        return self.directory / f"{file}{SIDECAR}"

    def _prepare(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)  # whatever the umask made of it
        except OSError as exc:
            raise refused_by_disk(exc, f"cannot make {self.directory}") from None

    def path(self, file: str) -> Path:
        """The stored archive `file`; NotFound when there is none."""
        check_name(file)
        path = self.directory / file
        if not path.is_file():
            raise NotFound(
                f"no backup {file} on this node: GET /esc/node/backups lists them; take one "
                "(POST /esc/node/backups) or upload one (PUT /esc/node/backups/FILE)"
            )
        return path

    def get(self, file: str) -> Backup:
        path = self.path(file)
        kept = self._kept_record(file)
        if kept is not None:
            return kept
        try:
            manifest, _, _ = read_manifest(path)
        except ArchiveError as exc:
            raise Conflict(f"backup {file} cannot be read: {exc}; delete it") from None
        return self._record(file, manifest, _file_sha256(path))

    def _kept_record(self, file: str) -> Backup | None:
        """The facts kept beside the archive; None when there are none to trust (a
        crash between the archive's rename and its sidecar's): the archive is read."""
        try:
            return Backup(**json.loads(self._sidecar(file).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _record(self, file: str, manifest: Manifest, sha256: str) -> Backup:
        """The archive's facts, kept beside it."""
        backup = Backup(
            file=file,
            sha256=sha256,
            size=(self.directory / file).stat().st_size,
            schema=manifest.schema_revision,
            taken_at=manifest.created_at,
            node=manifest.source_node,
            release=manifest.product_version,
        )
        try:
            write_atomic(self._sidecar(file), json.dumps(asdict(backup)).encode())
            fsync_dir(self.directory)
        except OSError as exc:
            # The archive is kept all the same: without its sidecar it is read when asked.
            log.warning("backup %s: its facts could not be kept beside it: %s", file, exc)
        return backup

    def backups(self) -> list[Backup]:
        """Every stored backup, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if re.fullmatch(BACKUP_FILE_PATTERN, path.name) and path.is_file():
                with contextlib.suppress(NotFound, Conflict):  # deleted meanwhile, unreadable
                    found.append(self.get(path.name))
        return sorted(found, key=lambda b: (b.taken_at, b.file))

    def delete(self, file: str) -> None:
        self.path(file).unlink()
        self._sidecar(file).unlink(missing_ok=True)

    def take(
        self,
        db: Database,
        node_name: str,
        *,
        schema: str | None = None,
        for_release: str | None = None,
    ) -> tuple[Backup, BackupResult]:
        """A backup of `db` written into the store (dump.write_backup), signed with the
        node's backup key (created on first use)."""
        self._prepare()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", node_name)[:64].lstrip("._-") or "node"
        file = f"{prefix}-{stamp}{TAKEN_SUFFIX}"
        try:
            key = ensure_key(self.home)
        except BackupKeyError as exc:
            raise Conflict(f"{exc}; nothing was written") from None
        try:
            result = write_backup(
                db,
                self.directory / file,
                node_name,
                key,
                schema=schema,
                for_release=for_release,
            )
        except BackupRequestError as exc:
            raise InvalidRequest(str(exc)) from None
        except NoRoom as exc:
            raise InsufficientStorage(str(exc)) from None
        except (BackupRefused, BackupError) as exc:
            raise Conflict(str(exc)) from None
        return self._record(file, result.manifest, _file_sha256(result.path)), result

    def receive(
        self, file: str, sha256: str, declared: int | None, *, allow_unsigned: bool = False
    ) -> BackupUpload:
        """Start receiving `file`; `declared`: the size the client announced."""
        check_name(file)
        self._prepare()
        if declared is not None:
            free = shutil.disk_usage(self.directory).free
            reserve = dump.ROOM_RESERVE_BYTES
            if declared + reserve > free:
                raise InsufficientStorage(
                    f"{file} is {declared} bytes, {self.directory} has {free} free (and "
                    f"keeps {reserve // 2**20} MiB for the node): free room there "
                    "(old backups, packages) first; nothing was stored"
                )
        return BackupUpload(self, file, sha256, declared, allow_unsigned)


class BackupUpload(Received):
    """One archive being received: checked as escadm restore reads it before it is
    kept: its manifest, and its signature by this node's backup key."""

    what = "backup"

    def __init__(
        self,
        store: BackupStore,
        file: str,
        sha256: str,
        declared: int | None,
        allow_unsigned: bool,
    ) -> None:
        self.store = store
        self.allow_unsigned = allow_unsigned
        self.manifest: Manifest | None = None
        super().__init__(store.directory, file, sha256, declared)

    def max_bytes(self) -> int:
        return MAX_BACKUP_BYTES

    def too_large_because(self) -> str:
        return "it is not an ESC backup"

    def refusal(self, path: Path) -> str | None:
        try:
            manifest, manifest_bytes, signature = read_manifest(path)
        except ArchiveError as exc:
            return f"it is not a readable ESC backup: {exc}"
        try:
            key = load_key(self.store.home)
        except BackupKeyError as exc:
            return str(exc)
        verdict = verify(key, manifest_bytes, signature)
        if not verdict.verified and not self.allow_unsigned:
            return (
                f"refused: {verdict.summary}; import the key of the node that wrote it "
                "(escadm backup-key export there, escadm backup-key import here), or, "
                "knowing where it comes from, upload it with ?allow_unsigned=true and "
                'restore it with "allow_unsigned": true'
            )
        self.manifest = manifest
        return None

    def place(self, path: Path) -> None:
        assert self.manifest is not None
        self.store._sidecar(self.file).unlink(missing_ok=True)  # never another's beside it
        os.replace(path, self.directory / self.file)
        self.backup = self.store._record(self.file, self.manifest, self.expected)

    def finish(self) -> Backup:  # type: ignore[override]
        super().finish()
        return self.backup


# a restore ----------------------------------------------------------------------------


class _InThisProcess:
    """A restore on the active node of a pair, run by its own API: the swap is asked of
    this process's role manager directly (esc.backup.restore.PairSwap)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def check(self) -> None:
        try:
            self.manager.check_restore()
        except Conflict as exc:
            raise RestoreError(f"{exc}; nothing was changed") from None

    def swap(self, token: str) -> dict[str, Any]:
        try:
            return self.manager.swap_in_restore(token)
        except Conflict as exc:  # refused before anything changed
            raise RestoreError(str(exc)) from None


def restore_backup(
    home: NodeHome,
    settings: Settings,
    db: Database,
    manager: Any,
    file: str,
    *,
    allow_unsigned: bool = False,
) -> dict[str, Any]:
    """Restore the stored backup `file` on this node as `escadm restore` does; the
    result as `escadm restore --json` gives it. `manager`: the node's role manager
    (None: a standalone node, which refuses)."""
    path = BackupStore(home).path(file)
    if manager is None:
        raise Conflict(
            "a standalone node restores only stopped (its database is replaced under "
            "every process that has it open: the engine, MONA), so not through its own "
            f"API: on the node, run escadm stop, escadm restore --file {path}, escadm start"
        )
    if manager.role != ACTIVE:
        what = "the standby" if manager.role == STANDBY else f"{manager.role} ({manager.reason})"
        active = the_active_node(db, settings.node.name, str(settings.ha.peer))
        raise Conflict(
            f"this node ({settings.node.name}, {settings.ha.address}) is {what} of the pair, "
            f"not its active: restore on {active} (upload the backup there, PUT "
            "/esc/node/backups/FILE, then POST /esc/node/restore there); the standby gets "
            "the restored data from it through replication; nothing was changed"
        )
    if not _RESTORING.acquire(blocking=False):
        raise Conflict("a restore runs on this node: wait for its answer; nothing was changed")
    try:
        result = restore(home, settings, path, allow_unsigned, _InThisProcess(manager))
    except ArchiveRefused as exc:
        raise InvalidRequest(str(exc)) from None
    except RestoreError as exc:
        raise Conflict(str(exc)) from None
    finally:
        _RESTORING.release()
    with db.read() as session:
        mode = op_mode.current(session).value
    return result_document(result, file, mode)
