"""The release wheels uploaded to a node (PUT /esc/node/packages/{file}), kept in its
home's packages/ for the package installer.

An upload is written beside the store under a temporary name, checked whole (its
sha256 against the one the client sent, a readable zip holding esc/__init__.py and the
metadata of the release its name says), and only then renamed into place: a package
in the store is always a whole, checked one, and a refused upload leaves nothing.
Its sha256 is kept beside it (NAME.sha256, as sha256sum writes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from esc.errors import Conflict, InvalidRequest, NotFound, TooLarge
from esc.files import fsync_dir, write_atomic
from esc.release.numbers import ReleaseNumber
from esc.release.wheel import (
    FILE_NAME_FORM,
    WheelError,
    file_name,
    metadata_release,
    release_in_name,
)

MAX_PACKAGE_BYTES = 256 * 1024 * 1024  # a release wheel is under 1 MiB; a bound, not a size
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"  # JSON Schema's and Python's, matched whole
PACKAGE_MODULE = "esc/__init__.py"


@dataclass(frozen=True)
class Package:
    file: str
    version: str
    sha256: str
    size: int


def release_of_name(file: str) -> ReleaseNumber:
    """The release a package's file name says; InvalidRequest for any other name."""
    version = release_in_name(file)
    if version is None:
        raise InvalidRequest(
            f"{file!r} is not the name of an ESC release wheel: name it {FILE_NAME_FORM}, "
            "as scripts/build-release does"
        )
    return ReleaseNumber.parse(version)


class Upload:
    """One package being received: a temporary file in the store, hashed and counted
    as it is written. `finish` checks it and moves it into place; `discard` removes
    whatever is left of it."""

    def __init__(
        self, store: PackageStore, file: str, sha256: str, declared: int | None = None
    ) -> None:
        self.release = release_of_name(file)
        self.file = file
        if declared is not None and declared > MAX_PACKAGE_BYTES:
            raise self._too_large()
        if not re.fullmatch(SHA256_PATTERN, sha256):
            raise InvalidRequest(
                "X-Checksum-Sha256 must be the package's sha256 as 64 hexadecimal digits "
                "(sha256sum prints it)"
            )
        self.store = store
        self.expected = sha256.lower()
        self.hash = hashlib.sha256()
        self.size = 0
        self.path: Path | None = None
        with self._disk():
            store.directory.mkdir(mode=0o700, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{file}.", suffix=".upload", dir=store.directory)
            self.path = Path(name)
            self._out = os.fdopen(fd, "wb")

    @contextlib.contextmanager
    def _disk(self) -> Iterator[None]:
        """A file system that refuses (full, read-only) is said so, not a 500."""
        try:
            yield
        except OSError as exc:
            raise Conflict(
                f"cannot store {self.file} in {self.store.directory}: "
                f"{exc.strerror or exc}; nothing was stored"
            ) from None

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_PACKAGE_BYTES:
            raise self._too_large()
        self.hash.update(chunk)
        with self._disk():
            self._out.write(chunk)

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"{self.file} is larger than {MAX_PACKAGE_BYTES // (1024 * 1024)} MiB, the bound "
            "of a package: it is not an ESC release wheel; nothing was stored"
        )

    def finish(self) -> Package:
        assert self.path is not None
        with self._disk():
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
        refused = self._refusal(self.path)
        if refused:
            raise InvalidRequest(f"{self.file}: {refused}; nothing was stored")
        checksum = self.store.checksum_file(self.file)
        with self._disk():
            checksum.unlink(missing_ok=True)  # never another upload's beside this one
            os.replace(self.path, self.store.directory / self.file)
        try:
            write_atomic(checksum, f"{self.expected}  {self.file}\n".encode())
            fsync_dir(self.store.directory)
        except OSError:
            pass  # stored; without its checksum file the store hashes it when asked
        return Package(self.file, str(self.release), self.expected, self.size)

    def _refusal(self, path: Path) -> str | None:
        """Why the received file is not the package its name and checksum say, or None."""
        if self.size == 0:
            return "the body is empty: send the wheel's bytes as the request body"
        actual = self.hash.hexdigest()
        if actual != self.expected:
            return (
                f"the body's sha256 is {actual}, not {self.expected} (X-Checksum-Sha256): "
                "it was damaged on the way, or the checksum is another file's; send it again"
            )
        metadata = f"esc-{self.release}.dist-info/METADATA"
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
                names = set(archive.namelist())
                if damaged is not None:
                    return f"its member {damaged} is damaged (a CRC mismatch): rebuild it"
                for member in (PACKAGE_MODULE, metadata):
                    if member not in names:
                        return f"it holds no {member}: it is not the ESC release {self.release}"
                text = archive.read(metadata).decode()
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
            return f"it is not a wheel (a zip archive): {exc}"
        try:
            holds = metadata_release(text, metadata)
        except WheelError as exc:
            return str(exc)
        if holds != self.release:
            return f"its {metadata} says Version {holds}, not the {self.release} of its name"
        return None

    def discard(self) -> None:
        if self.path is None:
            return
        if not self._out.closed:
            self._out.close()
        self.path.unlink(missing_ok=True)


class PackageStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def checksum_file(self, file: str) -> Path:
        return self.directory / f"{file}.sha256"

    def receive(self, file: str, sha256: str, declared: int | None = None) -> Upload:
        """Start receiving `file`; `declared`: the size the client announced."""
        return Upload(self, file, sha256, declared)

    def path(self, release: ReleaseNumber) -> Path:
        """The stored package of `release`; NotFound when it was not uploaded."""
        path = self.directory / file_name(release)
        if not path.is_file():
            raise NotFound(
                f"no package of ESC {release} on this node: upload it first "
                f"(PUT /esc/node/packages/{file_name(release)})"
            )
        return path

    def get(self, file: str) -> Package:
        release = release_of_name(file)
        path = self.path(release)
        try:
            sha256 = self.checksum_file(file).read_text().split()[0]
        except (OSError, IndexError):  # a crash between the rename and its checksum
            with path.open("rb") as package:
                sha256 = hashlib.file_digest(package, "sha256").hexdigest()
        return Package(file, str(release), sha256, path.stat().st_size)

    def packages(self) -> list[Package]:
        """Every stored package, oldest release first."""
        if not self.directory.is_dir():
            return []
        found = [p.name for p in self.directory.iterdir() if release_in_name(p.name)]
        return sorted(map(self.get, found), key=lambda p: ReleaseNumber.parse(p.version))

    def delete(self, file: str) -> None:
        path = self.path(release_of_name(file))
        path.unlink()
        self.checksum_file(file).unlink(missing_ok=True)
