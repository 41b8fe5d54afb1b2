"""What the API returns (and the few bodies it takes besides descriptors)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    UrlConstraints,
    field_validator,
)

from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Operation,
    Severity,
    Transaction,
    TransactionState,
    Vm,
    VmGroup,
    VmState,
)
from esc.descriptor import Name
from esc.engine.op_mode import OpMode
from esc.monitor.mode import MonitorMode
from esc.tls import load_certificates


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(BaseModel):
    transaction_id: str
    operation: Operation
    state: TransactionState
    href: str


class TransactionView(BaseModel):
    id: str
    operation: Operation
    state: TransactionState
    tenant: str
    deployment: str
    deployment_id: str | None
    automatic: bool
    resumes: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, tx: Transaction) -> TransactionView:
        return cls(
            id=tx.id,
            operation=tx.operation,
            state=tx.state,
            tenant=tx.tenant,
            deployment=tx.deployment_name,
            deployment_id=tx.deployment_id,
            automatic=tx.automatic,
            resumes=tx.resumes,
            error=tx.error,
            created_at=tx.created_at,
            started_at=tx.started_at,
            finished_at=tx.finished_at,
        )


class VmView(BaseModel):
    id: str
    name: str
    state: VmState
    address: str | None

    @classmethod
    def of(cls, vm: Vm) -> VmView:
        return cls(id=vm.id, name=vm.name, state=vm.state, address=vm.address)


class VmGroupView(BaseModel):
    name: str
    image: str
    flavor: str
    min_active: int
    max_active: int
    elastic: bool
    desired_count: int
    recovery_policy: str
    vms: list[VmView]

    @classmethod
    def of(cls, group: VmGroup) -> VmGroupView:
        return cls(
            name=group.name,
            image=group.image,
            flavor=group.flavor,
            min_active=group.min_active,
            max_active=group.max_active,
            elastic=group.elastic,
            desired_count=group.desired_count,
            recovery_policy=group.recovery_policy.value,
            vms=[VmView.of(vm) for vm in group.vms],
        )


class DeploymentSummary(BaseModel):
    id: str
    tenant: str
    name: str
    status: DeploymentStatus
    data_model_version: int
    vm_count: int
    created_at: datetime

    @classmethod
    def of(cls, deployment: Deployment) -> DeploymentSummary:
        return cls(
            id=deployment.id,
            tenant=deployment.tenant.name,
            name=deployment.name,
            status=deployment.status,
            data_model_version=deployment.data_model_version,
            vm_count=sum(len(g.vms) for g in deployment.vm_groups),
            created_at=deployment.created_at,
        )


class DeploymentView(DeploymentSummary):
    vm_groups: list[VmGroupView]
    descriptor: dict[str, Any]

    @classmethod
    def of(cls, deployment: Deployment) -> DeploymentView:
        return cls(
            **DeploymentSummary.of(deployment).model_dump(),
            vm_groups=[VmGroupView.of(g) for g in deployment.vm_groups],
            descriptor=deployment.descriptor,
        )


class TenantIn(_In):
    name: Name


class TenantView(BaseModel):
    id: str
    name: str
    created_at: datetime


class ScaleIn(_In):
    count: Annotated[int, Field(ge=0, le=100_000)]


class VmActionIn(_In):
    action: Annotated[
        str,
        Field(
            pattern=r"^(START|STOP|REBOOT|RECOVER)$", description="START, STOP, REBOOT or RECOVER"
        ),
    ]


CA_BUNDLE_MAX_CHARS = 65_536  # dozens of certificates: more than any private PKI's chain


class SubscriptionIn(_In):
    callback_url: Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)]
    tenant: Name | None = Field(None, description="Only this tenant's events; all when absent.")
    ca_bundle: str | None = Field(
        None,
        max_length=CA_BUNDLE_MAX_CHARS,
        description="PEM certificates an https callback_url's certificate must chain to, "
        "instead of the system's CAs (a private PKI). Absent: the system's CAs.",
    )

    @field_validator("ca_bundle")
    @classmethod
    def _certificates_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "PRIVATE KEY-----" in value:
            raise ValueError("holds a private key: send the CA certificates only, never a key")
        load_certificates(value)  # ValueError naming what is wrong
        return value


class SubscriptionView(BaseModel):
    id: str
    callback_url: str
    tenant: str | None
    ca_bundle: str | None = None
    created_at: datetime


class EventView(BaseModel):
    event_id: int
    type: str
    status: str
    severity: Severity = Field(description="INFO, ERROR, or CRITICAL (a person must act).")
    message: str
    tenant: str
    deployment: str
    deployment_id: str | None
    transaction_id: str | None
    vm_id: str | None
    vm_name: str | None
    time: datetime


class HealthCheck(BaseModel):
    name: str
    ok: bool
    detail: str


class Health(BaseModel):
    status_code: int = Field(description="2000 when the controller serves requests, 5000 if not")
    message: str
    stage: str = Field(description="INIT while starting or stopping, READY when serving")
    checks: list[HealthCheck] = Field(default_factory=list)


class VersionView(BaseModel):
    version: str
    release: str
    full: str
    data_model_version: int


class OpModeIn(_In):
    mode: OpMode
    ipt_check: StrictBool = Field(
        False, description="Refuse MAINTENANCE while transactions are in progress."
    )


class OpModeView(BaseModel):
    mode: OpMode


class MonitorModeIn(_In):
    mode: MonitorMode


class MonaService(BaseModel):
    running: bool
    pid: int | None = None
    pgid: int | None = None


class MonitoringView(BaseModel):
    mode: MonitorMode = Field(description="RUNNING, or STOPPED by escadm monitor stop.")
    op_mode: OpMode = Field(description="In MAINTENANCE nothing is watched or acted on.")
    service: MonaService
    status: dict[str, Any] | None = Field(
        None, description="MONA's own last report (watched VMs, actions), if it is running."
    )


ScriptName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class ScriptIn(_In):
    content: Annotated[
        str,
        Field(
            max_length=262_144,
            # Published, so clients (and the spec) know the rule; checked by the
            # script store, whose refusal says what to change.
            json_schema_extra={"pattern": r"^#![^\x00]*$"},
            description="The script, from #! on, without NUL bytes; at most 256 KiB as UTF-8.",
        ),
    ]
    timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="Seconds before MONA kills it (its whole process group)."
    )


class ScriptView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    timeout: float
    size: int
    updated_at: datetime
    content: str | None = None


class HaView(BaseModel):
    role: str = Field(description="ACTIVE, STANDBY, FAULT or STARTING")
    reason: str = Field(description="Why the node has that role (for FAULT: what to do)")
    node: str
    address: str
    peer: str


class SwitchoverView(BaseModel):
    from_node: str = Field(alias="from", description="The address of the old active")
    to: str = Field(description="The address of the new active")
    seconds: float = Field(description="From the handover to the peer answering as primary")
    left_in_flight: list[str] = Field(
        description="Transactions in flight at the handover, resumed by the new active"
    )

    model_config = {"populate_by_name": True}


class RestoreSwapIn(_In):
    aside: str = Field(
        description="The token of the restore whose checked aside data is to be swapped in"
    )


class RestoreSwapView(BaseModel):
    node: str = Field(description="The active node that swapped the restored data in")
    standby: str = Field(description="The address of the standby it replicates to")
    epoch: int | None = Field(description="The active role's lease epoch taken afterwards")
    seconds: float = Field(description="From the engine's pause to its resumption")
    interrupted: list[str] = Field(
        description="Transactions the engine was running when it paused; their state is "
        "now the backup's"
    )


class ForceActiveIn(_In):
    discard_unreplicated: bool = Field(
        description="Must be true: what the lost active did not replicate is given up"
    )


class VimIn(_In):
    name: Name = Field(description="The connection's name, as deployment.vim names it.")
    driver: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = Field(
        description="The VIM driver: openstack, libvirt, vmware, csp, local, vimhost."
    )
    settings: Annotated[dict[str, Any], Field(max_length=64)] = Field(
        default_factory=dict,
        description="The driver's section of [vim] (e.g. [vim.openstack]'s keys); secrets "
        "by file or environment variable name only.",
    )


class VimView(BaseModel):
    name: str
    driver: str
    source: str = Field(description="esc.toml (the node's own [vim]) or database")
    settings: dict[str, Any]
    deployments: int = Field(description="Deployments whose VMs are on it")
    usable: bool | None = Field(None, description="Its VIM answered a check (shown alone)")
    detail: str = Field("", description="What the check found")


class OrphanView(BaseModel):
    vim: str
    vm_id: str
    state: str
    detail: str


class OrphansView(BaseModel):
    orphans: list[OrphanView]
    unreachable: list[str] = Field(description="Connections that could not be asked, and why")
