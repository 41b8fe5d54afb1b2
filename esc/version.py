"""The product's release number (MAJOR.MINOR.MAINTENANCE.BUILD).

The upgrade policy and release catalog that compare release numbers build
on this module (MISSION R-2).
"""

from __future__ import annotations

from dataclasses import dataclass

from esc import __version__


@dataclass(frozen=True, order=True)
class Release:
    major: int
    minor: int
    maintenance: int
    build: int

    @classmethod
    def parse(cls, text: str) -> Release:
        parts = text.strip().split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ValueError(
                f"release number {text!r} is not MAJOR.MINOR.MAINTENANCE.BUILD "
                "(four non-negative integers, e.g. 5.4.0.88)"
            )
        return cls(*(int(p) for p in parts))

    @property
    def version(self) -> str:
        """The three-part version an operator sees as `version : X.Y.Z`."""
        return f"{self.major}.{self.minor}.{self.maintenance}"

    def __str__(self) -> str:
        return f"{self.version}.{self.build}"


CURRENT = Release.parse(__version__)


def version_lines() -> list[str]:
    """What `escadm version` and `esc_version` print."""
    return [f"version : {CURRENT.version}", f"release : {CURRENT.build}"]
