"""The release wheels uploaded to a node (PUT /esc/node/packages/{file}), kept in its
home's packages/ for the package installer.

An upload is received as esc.node.uploads receives every file, checked whole and as a
readable zip holding esc/__init__.py and the metadata of the release its name says.
Its sha256 is kept beside it (NAME.sha256, as sha256sum writes it).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from esc.errors import InvalidRequest, NotFound
from esc.files import fsync_dir, write_atomic
from esc.node.uploads import SHA256_PATTERN as SHA256_PATTERN  # the API publishes it
from esc.node.uploads import Received
from esc.release.numbers import ReleaseNumber
from esc.release.wheel import (
    FILE_NAME_FORM,
    WheelError,
    file_name,
    metadata_release,
    release_in_name,
)

MAX_PACKAGE_BYTES = 256 * 1024 * 1024  # a release wheel is under 1 MiB; a bound, not a size
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


class Upload(Received):
    """One package being received (esc.node.uploads): checked as the release wheel its
    name says, and kept with its sha256 beside it."""

    what = "package"

    def __init__(
        self, store: PackageStore, file: str, sha256: str, declared: int | None = None
    ) -> None:
        self.release = release_of_name(file)
        self.store = store
        super().__init__(store.directory, file, sha256, declared)

    def max_bytes(self) -> int:
        return MAX_PACKAGE_BYTES

    def too_large_because(self) -> str:
        return "it is not an ESC release wheel"

    def finish(self) -> Package:  # type: ignore[override]
        super().finish()
        return Package(self.file, str(self.release), self.expected, self.size)

    def place(self, path: Path) -> None:
        checksum = self.store.checksum_file(self.file)
        checksum.unlink(missing_ok=True)  # never another upload's beside this one
        os.replace(path, self.store.directory / self.file)
        try:
            write_atomic(checksum, f"{self.expected}  {self.file}\n".encode())
            fsync_dir(self.store.directory)
        except OSError:
            pass  # stored; without its checksum file the store hashes it when asked

    def refusal(self, path: Path) -> str | None:
        """Why the received file is not the package its name says, or None."""
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
