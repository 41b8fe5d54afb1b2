"""What the node API (/esc/node) returns and takes: the facts an upgrade's checks read,
the uploaded packages, and the package installer's state."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from esc.api.schemas import HealthCheck
from esc.node import installer
from esc.node.backups import BACKUP_FILE_PATTERN

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


_REVISION = r"^[0-9A-Za-z_]{1,32}$"


class BackupView(BaseModel):
    file: str = Field(description="The archive's name in the node's backups/")
    sha256: str
    size: int
    schema_: str = Field(
        alias="schema", description="The schema revision the archive is written as of"
    )
    taken_at: str = Field(
        description="When the backup was taken, ISO 8601 as its manifest says (its created_at)"
    )
    node: str = Field(description="The node it was taken on")
    release: str = Field(
        description="The release its manifest names: the writer's, or the older release "
        "it was written for"
    )

    model_config = ConfigDict(populate_by_name=True)


class BackupTaken(BackupView):
    role: str = Field(
        description="This node's role when it took it: ACTIVE, STANDBY, ... or STANDALONE"
    )
    database_schema: str = Field(
        description="The database's schema revision (the archive's may be older)"
    )
    rows: int = Field(description="Rows in the archive, every table together")
    seconds: float


class BackupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: Annotated[str, Field(pattern=_REVISION)] | None = Field(
        None,
        alias="schema",
        description="Write it as of this older revision of this release's migrations: only "
        "the tables and columns it has. Every migration after it up to the database's must "
        "be an expand (409 names the one that is not). Default: the database's own.",
    )
    for_release: Annotated[str, Field(pattern=r"^[0-9]{1,6}(\.[0-9]{1,6}){3}$")] | None = Field(
        None,
        description="The older release the archive is meant for: its manifest names it, so "
        "that release's restore (which refuses an archive of a newer one) takes it; give "
        "its schema revision as schema. Default: this release.",
    )


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: Annotated[str, Field(pattern=BACKUP_FILE_PATTERN)] = Field(
        description="An archive of this node's backups/ (uploaded or taken)"
    )
    allow_unsigned: StrictBool = Field(
        False,
        description="Restore an archive not signed by this node's backup key (as escadm "
        "restore --allow-unsigned): only one whose origin you know",
    )


class RestoreSignature(BaseModel):
    verified: bool
    summary: str
    unverified_because: str | None


class RestoreView(BaseModel):
    """As `escadm restore --json`."""

    file: str
    source_version: str = Field(description="The release the archive's manifest names")
    source_node: str
    created_at: str = Field(description="When the backup was taken, as its manifest says")
    schema_: str = Field(alias="schema", description="The archive's schema revision")
    rows: dict[str, int] = Field(description="Rows restored, per table")
    rows_in_archive: dict[str, int]
    not_restored: list[str] = Field(description="Each difference between the two, and why")
    signature: RestoreSignature
    op_mode: str = Field(description="The restored data's op_mode")
    seconds: float
    pair: dict[str, Any] | None = Field(
        description="What the active node's swap did: node, standby, epoch, seconds, "
        "interrupted (as POST /esc/ha/restore answers)"
    )

    model_config = ConfigDict(populate_by_name=True)
