"""The kept release wheels of releases/, and this checkout built as one: what the
upgrade tests install (never a version string made up for a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from esc.release.numbers import ReleaseNumber
from esc.upgrade.release_files import SUMS, file_sha256
from esc.version import CURRENT

ROOT = Path(__file__).parents[2]
RELEASES = ROOT / "releases"


def release_of(wheel: Path) -> ReleaseNumber:
    return ReleaseNumber.parse(wheel.name.split("-")[1])


def kept() -> dict[ReleaseNumber, Path]:
    return {release_of(p): p for p in RELEASES.glob("esc-*-py3-none-any.whl")}


def previous_release() -> Path:
    """The newest kept release older than this checkout."""
    older = [v for v in kept() if v < CURRENT]
    assert older, f"no release older than {CURRENT} in {RELEASES}"
    return kept()[max(older)]


def previous_train_release() -> Path:
    """The newest kept release of an older train than this checkout's (what an
    upgrade by image starts from)."""
    older = [v for v in kept() if v.parts[:2] < CURRENT.parts[:2]]
    assert older, f"no release of a train before {CURRENT} in {RELEASES}"
    return kept()[max(older)]


def previous_patch_build() -> Path | None:
    """The newest kept patch build of this checkout's maintenance release older than it
    (what a package upgrade starts from); None if this is the first."""
    same = [v for v in kept() if v < CURRENT and v.parts[:3] == CURRENT.parts[:3]]
    return kept()[max(same)] if same else None


def build_current(out: Path) -> Path:
    """This checkout as a release wheel (what scripts/build-release makes)."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = out.glob(f"esc-{CURRENT}-py3-none-any.whl")
    return wheel


def releases_dir(out: Path, *wheels: Path) -> Path:
    """A releases directory holding `wheels` and their SHA256SUMS, as one is shipped."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for wheel in wheels:
        copy = out / wheel.name
        if copy != wheel:
            copy.write_bytes(wheel.read_bytes())
        lines.append(f"{file_sha256(copy)}  {copy.name}\n")
    (out / SUMS).write_text("".join(lines))
    return out
