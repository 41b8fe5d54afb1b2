"""Each member of an archive checked whole before a byte of it is loaded.

A member's sha256 is only known once its last byte is read; loading while
reading would let an altered archive fill the database aside up to its
declared size before the checksum fails. So each member is first copied to
a spool file (unlinked from the start: a killed restore leaves nothing),
checked against its size, sha256 and row count, and only then loaded from
there. The spool is bounded by [backup] max_spool_bytes and by the free
space of its directory, both checked against the size the manifest
declares before the copy starts.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from esc.backup.archive import ArchiveError, Member


@dataclass(frozen=True)
class Spool:
    directory: Path
    max_bytes: int

    def _check_room(self, member: Member) -> None:
        declared = member.entry.bytes
        if declared > self.max_bytes:
            raise ArchiveError(
                f"{member.name} declares {declared} bytes, more than [backup] max_spool_bytes "
                f"({self.max_bytes}): if the archive is genuine, raise it in esc.toml"
            )
        free = shutil.disk_usage(self.directory).free
        if declared > free:
            raise ArchiveError(
                f"{member.name} declares {declared} bytes, more than the {free} bytes free in "
                f"{self.directory}: free some space and restore again"
            )

    @contextlib.contextmanager
    def verified(self, member: Member) -> Iterator[Member]:
        """The member, read from its spool file once all of it matched the manifest."""
        self._check_room(member)
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.directory, prefix=".restore-spool-") as file:
            try:
                for chunk in member.chunks():  # raises on a size, sha256 or row count mismatch
                    file.write(chunk)
                file.flush()
            except OSError as exc:
                raise ArchiveError(
                    f"cannot spool {member.name} in {self.directory}: {exc.strerror or exc}"
                ) from None
            file.seek(0)
            yield Member(member.name, member.table, member.entry, file)
