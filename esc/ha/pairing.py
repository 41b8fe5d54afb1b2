"""The pair file: what the two nodes of an HA pair must share, carried from the node
that created the pair's database to the other one.

The nodes share one database (replicated, so its accounts, the `admin` one
included, are the same on both), and besides it three secrets that are not in the
database: the node-local `escadm` account's credential (its hash is in the shared
database, so both nodes need the same secret), the backup key (a backup taken on
either node restores on the other) and PostgreSQL's replication secret (the standby
logs in to the primary with it). The node whose `escadm init --ha` creates the
database writes them, with the pair's identity, into a pair file (JSON, mode 0600,
`data/ha-pair.json` in its home, and the `--ha-pair-file` it was given); the other
node's init reads it. A copy stays in each node's home, so the pair can be joined
again (a node redeployed) with the same file.

The file carries a checksum of its contents: a truncated or edited file is refused
rather than half used. It is as secret as the database itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from esc.config import HaSettings

FORMAT = "esc-ha-pair/1"
PAIR_FILE = "ha-pair.json"  # in the node's data/


class PairFileError(Exception):
    """The pair file cannot be read, or is not this pair's; the message says the fix."""


@dataclass(frozen=True)
class PairFile:
    pair_id: str
    created_at: str
    created_by: str  # the address of the node that created the pair's database
    node_list: list[str]
    kad_vip: str
    kad_vri: int
    pg_port: int
    replication_secret: str
    local_credential: str
    backup_key: str  # hexadecimal, as data/backup.key holds it

    @classmethod
    def new(
        cls, ha: HaSettings, *, replication_secret: str, local_credential: str, backup_key: bytes
    ) -> PairFile:
        return cls(
            pair_id=secrets.token_hex(8),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            created_by=str(ha.address),
            node_list=[str(a) for a in ha.node_list],
            kad_vip=str(ha.kad_vip),
            kad_vri=ha.kad_vri,
            pg_port=ha.pg_port,
            replication_secret=replication_secret,
            local_credential=local_credential,
            backup_key=backup_key.hex(),
        )

    def _body(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def text(self) -> str:
        body = self._body()
        return json.dumps({**body, "checksum": _checksum(body)}, indent=1, sort_keys=True) + "\n"

    def mismatches(self, ha: HaSettings) -> list[str]:
        """How this node's [ha] differs from the pair the file describes (empty: fits)."""
        mine = {
            "ha_node_list": ([str(a) for a in ha.node_list], self.node_list),
            "kad_vip": (str(ha.kad_vip), self.kad_vip),
            "kad_vri": (ha.kad_vri, self.kad_vri),
            "pg_port": (ha.pg_port, self.pg_port),
        }
        return [
            f"{name} is {given} here but {theirs} in the pair file"
            for name, (given, theirs) in mine.items()
            if given != theirs
        ]


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_pair_file(path: Path, pair: PairFile) -> None:
    """Write the pair file (mode 0600); an existing file is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(pair.text())
    os.chmod(path, 0o600)


def read_pair_file(path: Path) -> PairFile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PairFileError(f"cannot read the pair file {path}: {exc.strerror or exc}") from None
    fix = "copy it again from the node that created the pair (its data/ha-pair.json, mode 0600)"
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
    except (ValueError, TypeError):
        raise PairFileError(f"{path} is not an ESC pair file (not JSON): {fix}") from None
    if data.get("format") != FORMAT:
        raise PairFileError(
            f"{path} is not an ESC pair file (format {data.get('format')!r}, not {FORMAT!r}): {fix}"
        )
    checksum = data.pop("checksum", None)
    if checksum != _checksum(data):
        raise PairFileError(f"{path} is corrupt (its checksum does not match): {fix}")
    data.pop("format")
    names = {f.name for f in fields(PairFile)}
    if set(data) != names:
        raise PairFileError(f"{path} does not hold the fields of a pair file: {fix}")
    return PairFile(**data)
