"""The controller's data model (MISSION R-1): everything the node knows is a row.

tenants → deployments → vm_groups → vms; transactions, events, subscriptions
and the delivery outbox; users. The database is the single source of truth
(ARCHITECTURE principle 1).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names so Alembic can alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for
# tables that grow for years (events, deliveries).
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is timezone-aware UTC in Python on every backend.

    SQLite keeps no offset, so values are stored as naive UTC and given
    their zone back on the way out; comparisons never mix naive and aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native ENUM type) so adding a member is a
    # code change, not a schema migration, on both backends.
    return Enum(cls, native_enum=False, length=32, validate_strings=True)


class RecoveryPolicy(enum.StrEnum):
    REBOOT_THEN_REDEPLOY = "REBOOT_THEN_REDEPLOY"
    REBOOT_ONLY = "REBOOT_ONLY"
    REDEPLOY_ONLY = "REDEPLOY_ONLY"


class DeploymentStatus(enum.StrEnum):
    DEPLOYING = "DEPLOYING"
    ACTIVE = "ACTIVE"
    UPDATING = "UPDATING"
    UNDEPLOYING = "UNDEPLOYING"
    ERROR = "ERROR"


class VmState(enum.StrEnum):
    PENDING = "PENDING"  # row exists, not yet created on the VIM
    DEPLOYED = "DEPLOYED"  # created on the VIM, not yet answering
    ALIVE = "ALIVE"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    UNDEPLOYING = "UNDEPLOYING"


class Operation(enum.StrEnum):
    DEPLOY = "DEPLOY"
    UNDEPLOY = "UNDEPLOY"
    UPDATE = "UPDATE"
    VM_START = "VM_START"
    VM_STOP = "VM_STOP"
    VM_REBOOT = "VM_REBOOT"
    VM_RECOVER = "VM_RECOVER"


class TransactionState(enum.StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self in (TransactionState.SUCCESS, TransactionState.FAILED)


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    deployments: Mapped[list[Deployment]] = relationship(back_populates="tenant")


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_deployments_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # The data model this deployment was created with: features of a newer
    # data model are refused for it (undeploy and redeploy to use them).
    data_model_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[DeploymentStatus] = mapped_column(_enum(DeploymentStatus))
    descriptor: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The VIM connection its VMs are on (vim_connections.name); None: the node's own [vim].
    vim: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    tenant: Mapped[Tenant] = relationship(back_populates="deployments")
    vm_groups: Mapped[list[VmGroup]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", order_by="VmGroup.name"
    )


class VmGroup(Base):
    __tablename__ = "vm_groups"
    __table_args__ = (UniqueConstraint("deployment_id", "name", name="uq_vm_groups_dep_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    image: Mapped[str] = mapped_column(String(256))
    flavor: Mapped[str] = mapped_column(String(128))
    min_active: Mapped[int] = mapped_column(Integer)
    max_active: Mapped[int] = mapped_column(Integer)
    elastic: Mapped[bool] = mapped_column(Boolean, default=False)
    # How many VMs the group should have now, min_active <= desired <= max_active.
    desired_count: Mapped[int] = mapped_column(Integer)
    recovery_policy: Mapped[RecoveryPolicy] = mapped_column(_enum(RecoveryPolicy))
    bootup_time: Mapped[float] = mapped_column(Float)
    recovery_wait_time: Mapped[float] = mapped_column(Float)
    max_recovery_attempts: Mapped[int] = mapped_column(Integer)
    kpis: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    day0_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Since schema 0009 (None in rows made before: no interfaces, volumes or placement).
    interfaces: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    volumes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)

    deployment: Mapped[Deployment] = relationship(back_populates="vm_groups")
    vms: Mapped[list[Vm]] = relationship(
        back_populates="vm_group", cascade="all, delete-orphan", order_by="Vm.ordinal"
    )


class Vm(Base):
    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("vm_group_id", "ordinal", name="uq_vms_group_ordinal"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    vm_group_id: Mapped[str] = mapped_column(
        ForeignKey("vm_groups.id", ondelete="CASCADE"), index=True
    )
    deployment_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(300), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    state: Mapped[VmState] = mapped_column(_enum(VmState))
    # Where the VIM says the VM answers (the local VIM: a loopback port).
    address: Mapped[str | None] = mapped_column(String(256), default=None)
    # Automatic recoveries started since the VM was last recovered (or deployed):
    # MONA stops at the vm_group's max_recovery_attempts and asks for a person.
    recovery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    vm_group: Mapped[VmGroup] = relationship(back_populates="vms")


class Transaction(Base):
    __tablename__ = "transactions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    operation: Mapped[Operation] = mapped_column(_enum(Operation))
    state: Mapped[TransactionState] = mapped_column(_enum(TransactionState), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    deployment_name: Mapped[str] = mapped_column(String(128))
    deployment_id: Mapped[str | None] = mapped_column(String(36), index=True, default=None)
    # "tenant/deployment" while the transaction is not final, NULL after: the
    # unique constraint lets the database itself enforce one write in flight
    # per deployment, even between two API workers racing.
    lock_key: Mapped[str | None] = mapped_column(String(300), unique=True, default=None)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Steps already done, so a resumed transaction never repeats one.
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False)
    resumes: Mapped[int] = mapped_column(Integer, default=0)
    # Since schema 0006: the executor that claimed it (owners.id, no foreign key: an
    # owner's row may be pruned while its transactions stay) and how many claims it has
    # had; every engine write checks both, so a superseded executor writes nothing.
    owner: Mapped[str | None] = mapped_column(String(36), default=None)
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class ExecutorOwner(Base):
    """One transaction executor, from its process start to its stop (esc.engine.claims).

    Its heartbeat says it is alive; a transaction it claimed is taken over only
    once it is not (heartbeat too old, row gone, or its process gone on this host).
    """

    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    node: Mapped[str] = mapped_column(String(128))  # [node] name
    host: Mapped[str] = mapped_column(String(256))  # where `pid` means something
    pid: Mapped[int] = mapped_column(Integer)
    # The process's start time (psutil): a reused pid is not mistaken for the owner.
    process_started: Mapped[float] = mapped_column(Float)
    # ACTIVE: may claim transactions; a standalone node always is.
    role: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ActiveLease(Base):
    """Who holds the active role of the database's nodes (esc.engine.lease): one row.

    Taking the role increments the epoch; every engine write checks it in its own
    database transaction, so a node that lost the role cannot complete a write.
    """

    __tablename__ = "active_lease"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)  # "active"
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    node: Mapped[str] = mapped_column(String(128), default="")  # [node] name of the holder
    # Where clients reach the holder's API (a standby names it when it refuses a write).
    address: Mapped[str] = mapped_column(String(256), default="")
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A planned switchover: the holder gave the role to this node (by address) and stopped;
    # that node takes it without fencing the old holder. Cleared when it is taken.
    handover_to: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Severity(enum.StrEnum):
    INFO = "INFO"
    ERROR = "ERROR"  # something failed; ESC may still mend it
    CRITICAL = "CRITICAL"  # ESC has given up: a person must act


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # SUCCESS / FAILURE
    # Since schema 0005 (release 1.1): what an operator filters alarms on.
    severity: Mapped[Severity] = mapped_column(
        _enum(Severity), default=Severity.INFO, server_default=Severity.INFO.value, index=True
    )
    message: Mapped[str] = mapped_column(Text)
    tenant: Mapped[str] = mapped_column(String(128))
    deployment_name: Mapped[str] = mapped_column(String(128))
    deployment_id: Mapped[str | None] = mapped_column(String(36), index=True)
    transaction_id: Mapped[str | None] = mapped_column(String(36), index=True)
    vm_id: Mapped[str | None] = mapped_column(String(36), default=None)
    vm_name: Mapped[str | None] = mapped_column(String(300), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    callback_url: Mapped[str] = mapped_column(String(2048))
    # NULL: events of every tenant.
    tenant: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # PEM certificates an https callback must chain to, instead of the system's CAs.
    ca_bundle: Mapped[str | None] = mapped_column(Text, default=None)


class Delivery(Base):
    """The outbox: one row per (subscription, event), written with the event."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_pending", "state", "next_attempt_at"),
        UniqueConstraint("subscription_id", "event_id", name="uq_deliveries_sub_event"),
    )

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    # Deliveries are ordered per (subscription, ordering_key): the deployment.
    ordering_key: Mapped[str] = mapped_column(String(300))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ControllerSetting(Base):
    """Settings of the controller itself that must survive restart, restore and
    switchover (so they live in the database): op_mode, for one."""

    __tablename__ = "controller_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class VimConnection(Base):
    """A VIM the controller may deploy on besides its own [vim]: the driver and its
    settings section (no secret: a password is named by file or variable only)."""

    __tablename__ = "vim_connections"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    driver: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class IdempotencyKey(Base):
    """A northbound write's Idempotency-Key and the answer it got, committed with the
    write itself: a retry with the same key (its first answer lost to a failover, say)
    gets that answer again, never a second write."""

    __tablename__ = "idempotency_keys"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # sha256 of the method, path, query and body: the same key with another request is
    # refused, not answered with the first one's result.
    fingerprint: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(2048))
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[Any] = mapped_column(JSON, nullable=True)  # None: an answer without a body
    headers: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class DynamicMapping(Base):
    """One action or metric of dynamic_mappings.xml (the file is a view of these rows)."""

    __tablename__ = "dynamic_mappings"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # action | metric
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # order in the file, kept on export
    type: Mapped[str] = mapped_column(String(64))
    meta_type: Mapped[str] = mapped_column(String(64))
    user_label: Mapped[str] = mapped_column(String(256), default="")
    properties: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class CustomScript(Base):
    """A post-event script that a rule's SCRIPT action runs (MONA); kept here, not on disk,
    so backup, restore and switchover carry it."""

    __tablename__ = "custom_scripts"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    content: Mapped[str] = mapped_column(Text)
    timeout: Mapped[float] = mapped_column(Float)  # seconds before it is killed
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
