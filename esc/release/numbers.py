"""Release numbers of two to four parts, and how two of them relate.

MAJOR.MINOR.MAINTENANCE.BUILD (5.4.0.88). A shorter number names a train or
a release with the missing parts zero for ordering: 5.4 < 5.4.0.88 < 5.4.1.
The release *train* is MAJOR.MINOR: the unit the upgrade policy speaks of.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

_NUMBER = re.compile(r"^\d{1,6}(\.\d{1,6}){1,3}$")


class ReleaseNumberError(ValueError):
    """A release number that cannot be read; the message shows the accepted form."""


class Change(enum.StrEnum):
    SAME = "same"
    PATCH = "patch"  # another BUILD of the same MAJOR.MINOR.MAINTENANCE
    MAINTENANCE = "maintenance"
    MINOR = "minor"
    MAJOR = "major"
    DOWNGRADE = "downgrade"


@functools.total_ordering
@dataclass(frozen=True)
class ReleaseNumber:
    parts: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> ReleaseNumber:
        if not isinstance(text, str) or not _NUMBER.match(text.strip()):
            raise ReleaseNumberError(
                f"{text!r} is not a release number: use two to four dot-separated "
                "non-negative integers, MAJOR.MINOR[.MAINTENANCE[.BUILD]], e.g. 5.5 or 5.4.0.88"
            )
        return cls(tuple(int(p) for p in text.strip().split(".")))

    @property
    def key(self) -> tuple[int, int, int, int]:
        padded = (*self.parts, 0, 0, 0)
        return padded[0], padded[1], padded[2], padded[3]

    @property
    def version(self) -> str:
        """MAJOR.MINOR.MAINTENANCE, as `escadm version` shows it."""
        return ".".join(str(p) for p in self.key[:3])

    @property
    def build(self) -> int:
        return self.key[3]

    @property
    def train(self) -> str:
        return f"{self.parts[0]}.{self.parts[1]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReleaseNumber) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: ReleaseNumber) -> bool:
        return self.key < other.key

    def __str__(self) -> str:
        return ".".join(str(p) for p in self.parts)


def classify(source: ReleaseNumber, target: ReleaseNumber) -> Change:
    """What kind of change going from `source` to `target` is."""
    if source == target:
        return Change.SAME
    if target < source:
        return Change.DOWNGRADE
    a, b = source.key, target.key
    if a[0] != b[0]:
        return Change.MAJOR
    if a[1] != b[1]:
        return Change.MINOR
    if a[2] != b[2]:
        return Change.MAINTENANCE
    return Change.PATCH
