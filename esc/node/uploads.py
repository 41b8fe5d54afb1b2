"""A file a node receives over its API (a release wheel, a backup), kept only once it is
checked whole.

The body is streamed to a temporary file beside where it is kept, hashed and counted
as it comes; once it is all there, its sha256 is compared with the one the client
sent and its content checked by its kind; only then is it renamed into place. So a
file in a store is always a whole, checked one, and a refused upload leaves nothing.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from esc.errors import Conflict, InsufficientStorage, InvalidRequest, TooLarge

SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"  # JSON Schema's and Python's, matched whole
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def refused_by_disk(exc: OSError, what: str) -> Conflict | InsufficientStorage:
    """A file system that refuses (full, read-only, ...) said so, not a 500: 507 when
    it is full, else 409; `what` says what could not be done."""
    kind = InsufficientStorage if exc.errno in NO_ROOM else Conflict
    return kind(f"{what}: {exc.strerror or exc}; nothing was stored")


class Received(abc.ABC):
    """One file being received into `directory` as `file`: a temporary file there,
    hashed and counted as it is written. `finish` checks it and moves it into place;
    `discard` removes whatever is left of it."""

    what = "file"  # in messages: "package", "backup"

    def __init__(self, directory: Path, file: str, sha256: str, declared: int | None) -> None:
        self.directory = directory
        self.file = file
        if declared is not None and declared > self.max_bytes():
            raise self._too_large()
        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise InvalidRequest(
                f"X-Checksum-Sha256 must be the {self.what}'s sha256 as 64 hexadecimal digits "
                "(sha256sum prints it)"
            )
        self.expected = sha256.lower()
        self.hash = hashlib.sha256()
        self.size = 0
        self.path: Path | None = None
        with self._disk():
            directory.mkdir(mode=0o700, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{file}.", suffix=".upload", dir=directory)
            self.path = Path(name)
            self._out = os.fdopen(fd, "wb")

    @abc.abstractmethod
    def max_bytes(self) -> int:
        """The most bytes this kind of file may have."""

    @abc.abstractmethod
    def refusal(self, path: Path) -> str | None:
        """Why the received file (whole, its sha256 the client's) is not what it claims
        to be, or None."""

    @abc.abstractmethod
    def place(self, path: Path) -> None:
        """Move the checked file into place (and what is kept beside it)."""

    @contextlib.contextmanager
    def _disk(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise refused_by_disk(exc, f"cannot store {self.file} in {self.directory}") from None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes():
            raise self._too_large()
        self.hash.update(chunk)
        with self._disk():
            self._out.write(chunk)

    def _too_large(self) -> TooLarge:
        bound = self.max_bytes()
        size = f"{bound // 2**30} GiB" if bound >= 2**30 else f"{bound // 2**20} MiB"
        return TooLarge(
            f"{self.file} is larger than {size}, the bound of a {self.what}: "
            f"{self.too_large_because()}; nothing was stored"
        )

    def too_large_because(self) -> str:
        return f"it is not a {self.what}"

    def finish(self) -> None:
        assert self.path is not None
        with self._disk():
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
        refused = self._whole() or self.refusal(self.path)
        if refused:
            raise InvalidRequest(f"{self.file}: {refused}; nothing was stored")
        with self._disk():
            self.place(self.path)

    def _whole(self) -> str | None:
        if self.size == 0:
            return f"the body is empty: send the {self.what}'s bytes as the request body"
        actual = self.hash.hexdigest()
        if actual != self.expected:
            return (
                f"the body's sha256 is {actual}, not {self.expected} (X-Checksum-Sha256): "
                "it was damaged on the way, or the checksum is another file's; send it again"
            )
        return None

    def discard(self) -> None:
        if self.path is None:
            return
        if not self._out.closed:
            self._out.close()
        self.path.unlink(missing_ok=True)
