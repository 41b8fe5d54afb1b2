"""The release packages an upgrade installs, found in a releases directory and verified.

A releases directory holds each release as its wheel, `esc-VERSION-py3-none-any.whl`,
with `SHA256SUMS` (`sha256sum` format) beside them, as ESC's releases are shipped.
A package is used only once its checksum matches the listed one and the version in
its metadata is the one asked for: a truncated download or a renamed file is refused
before anything on the pair changes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from esc.release.numbers import ReleaseNumber
from esc.upgrade.backup_restore import UpgradeError, wheel_version

SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class ReleasePackage:
    version: ReleaseNumber
    path: Path
    sha256: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def wheel_name(version: ReleaseNumber) -> str:
    return f"esc-{version}-py3-none-any.whl"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listed(directory: Path) -> dict[str, str]:
    sums = directory / SUMS
    try:
        lines = sums.read_text().splitlines()
    except OSError as exc:
        raise UpgradeError(
            f"cannot read {sums} ({exc.strerror}): a releases directory lists its packages' "
            "checksums there (sha256sum format); download it with the packages"
        ) from None
    listed = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            listed[parts[1].lstrip("*")] = parts[0].lower()
    return listed


def find_package(directory: Path, version: ReleaseNumber) -> ReleasePackage:
    """The verified package of `version` in `directory`; UpgradeError naming the fix."""
    name = wheel_name(version)
    path = directory / name
    if not path.is_file():
        present = sorted(p.name for p in directory.glob("esc-*-py3-none-any.whl"))
        raise UpgradeError(
            f"no package of ESC {version} in {directory} (no {name}; it holds "
            f"{', '.join(present) or 'no ESC package'}): download the release there, or "
            "give its directory with --releases"
        )
    expected = _listed(directory).get(name)
    if expected is None:
        raise UpgradeError(f"{directory / SUMS} does not list {name}: its checksum is unknown")
    actual = file_sha256(path)
    if actual != expected:
        raise UpgradeError(
            f"{path} does not match its checksum in {SUMS} (sha256 {actual}, listed "
            f"{expected}): the file is damaged or not the release; download it again"
        )
    found = wheel_version(path)
    if found != version:
        raise UpgradeError(f"{path} holds ESC {found}, not {version}: the file was renamed")
    return ReleasePackage(version, path, actual)
