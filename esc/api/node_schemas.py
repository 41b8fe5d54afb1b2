"""What the node API (/esc/node) returns and takes: the facts an upgrade's checks read,
the uploaded packages, and the package installer's state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from esc.api.schemas import HealthCheck
from esc.node import installer

_UNREADABLE = "Why this fact could not be read (its values are then null); null when read."


class HealthFact(BaseModel):
    passed: bool = Field(description="As GET /esc/health: serving, and every check passes")
    checks: list[HealthCheck]


class SchemaFact(BaseModel):
    revision: str | None = Field(description="The database's schema revision")
    head: str = Field(description="The revision this release's migrations end at")
    last_migration: dict[str, Any] | None = Field(
        None,
        description="The migration this process ran as it took the active role: from, to "
        "(revisions) and seconds; null when it ran none",
    )
    error: str | None = Field(None, description=_UNREADABLE)


class PeerFact(BaseModel):
    address: str
    connection: str = Field(description="Connected or Connecting")
    role: str | None = Field(description="Primary or Secondary, while connected")
    disk: str | None = Field(description="UpToDate, Inconsistent or Outdated, while connected")
    state: str | None = Field(description="The walsender's state, as the primary sees it")
    sync_state: str | None = Field(description="sync, async, potential or quorum")
    lag_bytes: int | None
    lag_seconds: float | None = Field(description="Replay lag, where PostgreSQL gives it")


class ReplicationFact(BaseModel):
    """The node's replication state in the words of `drbdadm status`."""

    role: str | None = Field(description="Primary or Secondary")
    disk: str | None = Field(description="UpToDate, Inconsistent or Outdated")
    connected: bool | None
    uptodate: bool | None = Field(description="Both disks UpToDate and the standby sync")
    wal_lsn: str | None = Field(
        description="Primary: the current WAL position; standby: the last replayed"
    )
    synchronous_standby_names: str | None
    peer: PeerFact | None
    notes: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description=_UNREADABLE)


class OpModeFact(BaseModel):
    mode: str | None = Field(description="OPERATION or MAINTENANCE")
    error: str | None = Field(None, description=_UNREADABLE)


class TransactionsFact(BaseModel):
    queued: int | None = Field(description="Transactions QUEUED")
    in_progress: int | None = Field(
        description="Transactions IN_PROGRESS (one interrupted by a stop stays so until "
        "the holder of the active role resumes it)"
    )
    error: str | None = Field(None, description=_UNREADABLE)


class DiskFact(BaseModel):
    path: str = Field(description="The node home")
    free_bytes: int | None
    error: str | None = Field(None, description=_UNREADABLE)


class VipFact(BaseModel):
    address: str
    interface: str
    held: bool = Field(description="The VIP is on this node's interface now")


class NodeView(BaseModel):
    node: str = Field(description="[node] name")
    address: str = Field(description="The node's address in the pair, else the API's host")
    version: str = Field(description="The running release, MAJOR.MINOR.MAINTENANCE.BUILD")
    role: str = Field(description="ACTIVE, STANDBY, FAULT, STARTING, or STANDALONE")
    role_reason: str
    health: HealthFact
    schema_: SchemaFact = Field(alias="schema")
    replication: ReplicationFact | None = Field(description="null on a standalone node")
    op_mode: OpModeFact
    transactions: TransactionsFact
    disk: DiskFact
    vip: VipFact | None = Field(description="null on a standalone node")

    model_config = ConfigDict(populate_by_name=True)


class PackageView(BaseModel):
    file: str
    version: str
    sha256: str
    size: int


class InstallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, Field(pattern=r"^[0-9]{1,6}(\.[0-9]{1,6}){3}$")] = Field(
        description="The release to install; its package must have been uploaded"
    )
    rollback: StrictBool = Field(
        False, description="Allow a release older than the running one (going back)"
    )


class InstallStep(BaseModel):
    name: str = Field(
        description="stop, save, install, start, check; going back: restore, start-old, check-old"
    )
    started_at: datetime
    ended_at: datetime | None
    ok: bool | None = Field(description="null while it runs")
    detail: str


class InstallView(BaseModel):
    format: int = Field(description=f"The state file's format ({installer.FORMAT})")
    state: Literal[installer.STATES]  # type: ignore[valid-type]
    from_version: str | None = Field(alias="from", description="The release it replaces")
    to: str | None
    rollback: bool
    pid: int | None = Field(description="The installer's process")
    started_at: datetime | None
    finished_at: datetime | None
    steps: list[InstallStep]
    error: str | None
    rolled_back_to: str | None = Field(
        description="The release that runs again after a failed install"
    )

    model_config = ConfigDict(populate_by_name=True)
