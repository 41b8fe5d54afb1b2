"""This installed release (MAJOR.MINOR.MAINTENANCE.BUILD) and how it is shown."""

from __future__ import annotations

from esc import __version__
from esc.release.numbers import ReleaseNumber

CURRENT = ReleaseNumber.parse(__version__)
if len(CURRENT.parts) != 4:
    raise RuntimeError(f"esc.__version__ {__version__!r} must have four parts")


def version_lines() -> list[str]:
    """What `escadm version` and `esc_version` print."""
    return [f"version : {CURRENT.version}", f"release : {CURRENT.build}"]
