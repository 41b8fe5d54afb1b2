"""This node's HA role, as the role manager last decided it: `run/ha-role.json`.

One small JSON object, written atomically (readers see the old record or the new,
never half of one) by whoever changes the node's role, and read by everything that
must act on it: the pgsql service (start as primary or as standby), `escadm status`
(Active / Standby / Fault), the node's logs.

    {"role": "STANDBY", "reason": "keepalived BACKUP", "since": "2026-…+00:00",
     "epoch": 7, "peer": "198.18.0.12", "active": "198.18.0.12"}

`epoch` is the active role's lease epoch when known, `active` the address of the node
that holds the active role as this node knows it (null: none, or not known).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from esc.config import NodeHome
from esc.files import write_atomic

ACTIVE = "ACTIVE"
STANDBY = "STANDBY"
FAULT = "FAULT"
STARTING = "STARTING"
ROLES = (ACTIVE, STANDBY, FAULT, STARTING)
ROLE_FILE = "ha-role.json"


class RoleRecordError(ValueError):
    """run/ha-role.json exists but is not a role record; the message names the file."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RoleRecord:
    role: str
    reason: str
    since: str  # ISO 8601 with its offset
    epoch: int | None
    peer: str
    active: str | None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.reason, str):
            raise ValueError("reason must be a string")
        if datetime.fromisoformat(self.since).tzinfo is None:
            raise ValueError(f"since {self.since!r} has no UTC offset")
        if self.epoch is not None and (
            isinstance(self.epoch, bool) or not isinstance(self.epoch, int)
        ):
            raise ValueError(f"epoch {self.epoch!r} is neither an integer nor null")
        ipaddress.IPv4Address(self.peer)
        if self.active is not None:
            ipaddress.IPv4Address(self.active)

    @classmethod
    def now(
        cls,
        role: str,
        reason: str,
        *,
        peer: str,
        active: str | None = None,
        epoch: int | None = None,
    ) -> RoleRecord:
        """A record of a role taken at this moment."""
        return cls(role, reason, _now(), epoch, str(peer), None if active is None else str(active))

    def as_dict(self) -> dict:
        return asdict(self)


def role_path(home: NodeHome) -> Path:
    return home.run / ROLE_FILE


def read_role(home: NodeHome) -> RoleRecord | None:
    """The node's role record; None when there is none yet (a node never started, or
    whose role has not been decided). RoleRecordError when the file is not one."""
    path = role_path(home)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return RoleRecord(**data)
    except (ValueError, TypeError) as exc:
        raise RoleRecordError(
            f"{path} is not a role record ({exc}): it is rewritten at the node's next role "
            "change; remove it to let the node start as a standby"
        ) from None


def write_role(home: NodeHome, record: RoleRecord) -> None:
    """Replace the role record atomically (mode 0600)."""
    home.run.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(role_path(home), json.dumps(record.as_dict(), sort_keys=True).encode())
