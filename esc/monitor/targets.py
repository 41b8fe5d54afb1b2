"""What MONA watches now, read from the database at every refresh.

Watched: the VMs of ACTIVE (or ERROR) deployments that have no transaction
in flight: while a deployment is being deployed, updated, scaled, recovered
or undeployed its monitors are off, and they start afresh after. A VM is
watched while ALIVE, and while in ERROR with automatic recovery attempts
left. Nothing is watched in MAINTENANCE or when monitoring is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Tenant,
    Transaction,
    Vm,
    VmGroup,
    VmState,
)
from esc.engine import op_mode
from esc.monitor import mode
from esc.monitor.mappings import Mapping, mappings_in_force

WATCHED_DEPLOYMENTS = (DeploymentStatus.ACTIVE, DeploymentStatus.ERROR)


@dataclass(frozen=True)
class VmTarget:
    id: str
    name: str
    address: str | None
    state: VmState
    recovery_attempts: int


@dataclass(frozen=True)
class GroupTarget:
    id: str
    name: str
    tenant: str
    deployment: str
    deployment_id: str
    kpis: tuple[dict[str, Any], ...]
    rules: tuple[dict[str, Any], ...]
    max_recovery_attempts: int
    vms: tuple[VmTarget, ...]

    def alive_vms(self) -> list[VmTarget]:
        """The VMs a threshold metric is read from."""
        return [vm for vm in self.vms if vm.state is VmState.ALIVE and vm.address]

    def watched_vms(self) -> list[VmTarget]:
        return [
            vm
            for vm in self.vms
            if vm.address
            and (
                vm.state is VmState.ALIVE
                or (
                    vm.state is VmState.ERROR
                    and 0 < vm.recovery_attempts < self.max_recovery_attempts
                )
            )
        ]


@dataclass
class Snapshot:
    paused: str | None  # why nothing is watched, or None
    groups: list[GroupTarget] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # tenant/deployment with a transaction open
    mappings: dict[tuple[str, str], Mapping] = field(default_factory=dict)
    read_at: float = 0.0  # MONA's loop time when the read began

    def metric(self, name: str) -> Mapping | None:
        return self.mappings.get(("metric", name))

    def action(self, name: str) -> Mapping | None:
        return self.mappings.get(("action", name))


def load_snapshot(session: Session) -> Snapshot:
    mappings = {(m.kind, m.name): m for m in mappings_in_force(session)}
    if op_mode.current(session) is op_mode.OpMode.MAINTENANCE:
        return Snapshot("ESC is in MAINTENANCE mode", mappings=mappings)
    if mode.current(session) is mode.MonitorMode.STOPPED:
        return Snapshot("monitoring is stopped (escadm monitor start)", mappings=mappings)
    held = session.execute(
        select(Transaction.deployment_id, Transaction.lock_key).where(
            Transaction.lock_key.is_not(None)
        )
    ).all()
    held_ids = {deployment_id for deployment_id, _ in held if deployment_id}
    groups_by_id: dict[str, dict[str, Any]] = {}
    rows = session.execute(
        select(
            VmGroup.id,
            VmGroup.name,
            Tenant.name,
            Deployment.name,
            Deployment.id,
            VmGroup.kpis,
            VmGroup.rules,
            VmGroup.max_recovery_attempts,
        )
        .join(Deployment, VmGroup.deployment_id == Deployment.id)
        .join(Tenant, Deployment.tenant_id == Tenant.id)
        .where(Deployment.status.in_(WATCHED_DEPLOYMENTS))
    )
    for gid, gname, tenant, dname, did, kpis, rules, max_attempts in rows:
        if did in held_ids or not kpis:
            continue
        groups_by_id[gid] = {
            "id": gid,
            "name": gname,
            "tenant": tenant,
            "deployment": dname,
            "deployment_id": did,
            "kpis": tuple(kpis),
            "rules": tuple(rules or ()),
            "max_recovery_attempts": max_attempts,
            "vms": [],
        }
    vm_rows = session.execute(
        select(Vm.vm_group_id, Vm.id, Vm.name, Vm.address, Vm.state, Vm.recovery_attempts)
        .where(Vm.state.in_((VmState.ALIVE, VmState.ERROR)))
        .order_by(Vm.name)
    )
    for group_id, *vm in vm_rows:
        group = groups_by_id.get(group_id)
        if group is not None:
            group["vms"].append(VmTarget(*vm))
    groups = [
        GroupTarget(**{**g, "vms": tuple(g["vms"])}) for g in groups_by_id.values() if g["vms"]
    ]
    return Snapshot(None, groups, sorted(key for _, key in held), mappings)
