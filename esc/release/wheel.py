"""A release of ESC as a wheel: its file name, and what its metadata says it holds.

Read from the archive itself, never trusted from the name alone: a wheel names its
release in `esc-VERSION.dist-info/METADATA`, and that is what gets installed.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

from esc.release.numbers import ReleaseNumber, ReleaseNumberError

PROJECT = "esc"
# The name scripts/build-release gives a release, as a pattern of JSON Schema and Python
# alike (ASCII digits only; matched whole).
FILE_NAME_PATTERN = r"^esc-([0-9]{1,6}(?:\.[0-9]{1,6}){3})-py3-none-any\.whl$"
FILE_NAME_FORM = "esc-MAJOR.MINOR.MAINTENANCE.BUILD-py3-none-any.whl"


def release_in_name(file: str) -> str | None:
    """The release a wheel's file name says, None when it is not a release's name."""
    match = re.fullmatch(FILE_NAME_PATTERN, file)
    return match.group(1) if match else None


class WheelError(ValueError):
    """Not a readable wheel of an ESC release; the message says what is wrong."""


def file_name(version: ReleaseNumber) -> str:
    return f"{PROJECT}-{version}-py3-none-any.whl"


def read_member(wheel: Path, wanted: Callable[[str], bool], what: str) -> str:
    """The text of the first member of `wheel` whose name `wanted` accepts."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if wanted(n))
            return archive.read(name).decode()
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise WheelError(f"{wheel} is not a readable wheel ({exc})") from None
    except StopIteration:
        raise WheelError(f"{wheel} has no {what}: it is not an ESC release") from None


def metadata_release(text: str, where: str) -> ReleaseNumber:
    """The ESC release a METADATA file's Name and Version say."""
    fields = dict(
        line.split(": ", 1) for line in text.splitlines() if ": " in line and line[0] != " "
    )
    if fields.get("Name") != PROJECT:
        raise WheelError(f"{where} is a package of {fields.get('Name')!r}, not of ESC")
    try:
        return ReleaseNumber.parse(fields.get("Version", ""))
    except ReleaseNumberError as exc:
        raise WheelError(f"{where}: {exc}") from None


def wheel_release(wheel: Path) -> ReleaseNumber:
    """The release a wheel holds, from its metadata (not its file name)."""
    metadata = read_member(wheel, lambda n: n.endswith(".dist-info/METADATA"), "METADATA")
    return metadata_release(metadata, str(wheel))
