"""Turning a northbound write into a persisted transaction.

Each function validates the request, writes the model change and the
transaction row in the caller's database transaction, and returns the
transaction. What needs the VIM (do the images and flavors exist) is
checked before, outside the write: `validate_on_vim`, so no write waits
on the VIM's network round trips. Nothing runs yet: the executor picks it up after the commit,
so a request is durable before it is acknowledged (202).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Operation,
    Tenant,
    Transaction,
    TransactionState,
    Vm,
    VmGroup,
    VmState,
)
from esc.descriptor import (
    DATA_MODEL_VERSION,
    DeploymentSpec,
    Descriptor,
    VmGroupSpec,
    check_data_model,
)
from esc.engine.vims import Vims, connection_name, vim_label
from esc.errors import Conflict, InvalidRequest, NotFound, Unavailable
from esc.monitor.mappings import check_references
from esc.vim.base import TransientVimError, VimError

# One query per level instead of one per vm_group when a deployment is shown.
WITH_GROUPS_AND_VMS = selectinload(Deployment.vm_groups).selectinload(VmGroup.vms)

VM_ACTIONS = {
    "START": Operation.VM_START,
    "STOP": Operation.VM_STOP,
    "REBOOT": Operation.VM_REBOOT,
    "RECOVER": Operation.VM_RECOVER,
}


def lock_key(tenant: str, deployment: str) -> str:
    return f"{tenant}/{deployment}"


def _open_transaction(
    session: Session,
    operation: Operation,
    tenant: str,
    deployment: str,
    request: dict[str, Any],
    *,
    deployment_id: str | None = None,
    automatic: bool = False,
) -> Transaction:
    key = lock_key(tenant, deployment)
    tx = Transaction(
        operation=operation,
        state=TransactionState.QUEUED,
        tenant=tenant,
        deployment_name=deployment,
        deployment_id=deployment_id,
        lock_key=key,
        request=request,
        progress={},
        automatic=automatic,
        resumes=0,
    )
    try:
        with session.begin_nested():
            session.add(tx)
            session.flush()
    except IntegrityError:
        holder = session.scalar(select(Transaction).where(Transaction.lock_key == key))
        what = (
            f"transaction {holder.id} ({holder.operation.value}, {holder.state.value})"
            if holder
            else "another transaction"
        )
        raise Conflict(
            f"deployment {key} already has {what} in flight; one write at a time per "
            "deployment: wait for it to end (escadm ip_trans) and retry"
        ) from None
    return tx


def validate_on_vim(vims: Vims, spec: DeploymentSpec) -> None:
    """The VIM connection the deployment names exists, and the images and flavors it
    names are on that VIM. Call it with no database write open: it may wait on the
    VIM's network. A VIM that cannot answer now makes the request one to retry."""
    try:
        vim = vims.get(spec.vim)
    except VimError as exc:
        raise InvalidRequest(f"deployment.vim: {exc}") from None
    problems = []
    for group in spec.vm_groups:
        for check, value in (
            (vim.validate_image, group.image),
            (vim.validate_flavor, group.flavor),
        ):
            try:
                check(value)
            except TransientVimError as exc:
                raise Unavailable(
                    f"VIM {vim_label(spec.vim)} cannot check vm_group {group.name} now: "
                    f"{exc}; retry the request"
                ) from None
            except VimError as exc:
                problems.append(f"vm_group {group.name}: {exc}")
    if problems:
        raise InvalidRequest("; ".join(problems))


def apply_group_spec(group: VmGroup, spec: VmGroupSpec) -> None:
    group.image = spec.image
    group.flavor = spec.flavor
    group.min_active = spec.scaling.min_active
    group.max_active = spec.scaling.max_active
    group.elastic = spec.scaling.elastic
    group.recovery_policy = spec.recovery_policy.action_on_recovery
    group.max_recovery_attempts = spec.recovery_policy.max_retries
    group.bootup_time = spec.bootup_time
    group.recovery_wait_time = spec.recovery_wait_time
    group.kpis = [k.model_dump(mode="json") for k in spec.kpis]
    group.rules = [r.model_dump(mode="json") for r in spec.rules]
    group.day0_config = dict(spec.day0_config)
    group.interfaces = [i.model_dump(mode="json") for i in spec.interfaces]
    group.volumes = [v.model_dump(mode="json") for v in spec.volumes]
    group.placement = spec.placement.model_dump(mode="json")
    if group.desired_count is None:
        group.desired_count = spec.scaling.min_active
    group.desired_count = max(
        spec.scaling.min_active, min(group.desired_count, spec.scaling.max_active)
    )


def new_group(spec: VmGroupSpec) -> VmGroup:
    group = VmGroup(name=spec.name)
    apply_group_spec(group, spec)
    return group


def ensure_vm_rows(group: VmGroup, deployment_name: str) -> None:
    """Rows for ordinals below desired_count; surplus rows are marked for removal."""
    have = {vm.ordinal: vm for vm in group.vms}
    for ordinal in range(group.desired_count):
        if ordinal not in have:
            group.vms.append(
                Vm(
                    deployment_id=group.deployment_id,
                    name=f"{deployment_name}-{group.name}-{ordinal}",
                    ordinal=ordinal,
                    state=VmState.PENDING,
                )
            )
    for ordinal, vm in have.items():
        if ordinal >= group.desired_count:
            vm.state = VmState.UNDEPLOYING


def find_deployment(session: Session, tenant: str, name: str) -> Deployment:
    deployment = session.scalar(
        select(Deployment)
        .join(Tenant)
        .where(Tenant.name == tenant, Deployment.name == name)
        .options(WITH_GROUPS_AND_VMS)
    )
    if deployment is None:
        raise NotFound(
            f"no deployment {name!r} in tenant {tenant!r}; list them with escadm deployment list"
        )
    return deployment


def _get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(name=name)
            session.add(tenant)
            session.flush()
        return tenant
    except IntegrityError:
        # Another request created it between our look and our insert.
        return session.scalars(select(Tenant).where(Tenant.name == name)).one()


def submit_deploy(session: Session, descriptor: Descriptor, max_vms: int) -> Transaction:
    spec = descriptor.deployment
    if descriptor.initial_vm_count() > max_vms:
        raise InvalidRequest(
            f"deployment {spec.name} asks for {descriptor.initial_vm_count()} VMs at start; this "
            f"controller allows {max_vms} per deployment ([limits] max_vms_per_deployment)"
        )
    check_references(session, spec.vm_groups)
    tx = _open_transaction(
        session,
        Operation.DEPLOY,
        descriptor.tenant,
        spec.name,
        {"descriptor": descriptor.model_dump(mode="json")},
    )
    tenant = _get_or_create_tenant(session, descriptor.tenant)
    exists = session.scalar(
        select(Deployment.id).where(Deployment.tenant_id == tenant.id, Deployment.name == spec.name)
    )
    if exists:
        raise Conflict(
            f"deployment {spec.name!r} already exists in tenant {descriptor.tenant!r}: choose "
            "another name, or undeploy it first"
        )
    deployment = Deployment(
        tenant=tenant,
        name=spec.name,
        data_model_version=DATA_MODEL_VERSION,
        vim=connection_name(spec.vim),
        status=DeploymentStatus.DEPLOYING,
        descriptor=descriptor.model_dump(mode="json"),
    )
    session.add(deployment)
    session.flush()
    for group_spec in spec.vm_groups:
        group = new_group(group_spec)
        group.deployment_id = deployment.id
        deployment.vm_groups.append(group)
        ensure_vm_rows(group, spec.name)
    tx.deployment_id = deployment.id
    return tx


def submit_undeploy(session: Session, tenant: str, name: str) -> Transaction:
    deployment = find_deployment(session, tenant, name)
    tx = _open_transaction(
        session, Operation.UNDEPLOY, tenant, name, {}, deployment_id=deployment.id
    )
    deployment.status = DeploymentStatus.UNDEPLOYING
    return tx


def submit_update(
    session: Session, tenant: str, name: str, descriptor: Descriptor, max_vms: int
) -> Transaction:
    if (descriptor.tenant, descriptor.deployment.name) != (tenant, name):
        raise InvalidRequest(
            f"descriptor is for {descriptor.tenant}/{descriptor.deployment.name} but the request "
            f"is for {tenant}/{name}; tenant and deployment name cannot be changed by an update"
        )
    deployment = find_deployment(session, tenant, name)
    check_data_model(descriptor, f"{tenant}/{name}", deployment.data_model_version)
    if connection_name(descriptor.deployment.vim) != deployment.vim:
        raise InvalidRequest(
            f"deployment {tenant}/{name} is on VIM {vim_label(deployment.vim)}; an update "
            f"cannot move it to {vim_label(descriptor.deployment.vim)}: its VMs are there. "
            "Undeploy and deploy it on the other VIM"
        )
    if descriptor.initial_vm_count() > max_vms:
        raise InvalidRequest(
            f"update asks for at least {descriptor.initial_vm_count()} VMs; this controller "
            f"allows {max_vms} per deployment"
        )
    current = {g.name: g for g in deployment.vm_groups}
    for group_spec in descriptor.deployment.vm_groups:
        old = current.get(group_spec.name)
        if old and (old.image, old.flavor) != (group_spec.image, group_spec.flavor):
            raise InvalidRequest(
                f"vm_group {group_spec.name}: image and flavor of an existing vm_group cannot be "
                "changed by an update; add a new vm_group, or undeploy and redeploy"
            )
    check_references(session, descriptor.deployment.vm_groups)
    tx = _open_transaction(
        session,
        Operation.UPDATE,
        tenant,
        name,
        {"descriptor": descriptor.model_dump(mode="json")},
        deployment_id=deployment.id,
    )
    deployment.status = DeploymentStatus.UPDATING
    return tx


def submit_scale(
    session: Session, tenant: str, name: str, vm_group: str, count: int, *, automatic: bool = False
) -> Transaction:
    deployment = find_deployment(session, tenant, name)
    group = next((g for g in deployment.vm_groups if g.name == vm_group), None)
    if group is None:
        raise NotFound(f"deployment {tenant}/{name} has no vm_group {vm_group!r}")
    if not group.min_active <= count <= group.max_active:
        raise InvalidRequest(
            f"vm_group {vm_group} can have {group.min_active} to {group.max_active} VMs "
            f"(min_active..max_active); {count} is outside"
        )
    tx = _open_transaction(
        session,
        Operation.UPDATE,
        tenant,
        name,
        {"scale": {"vm_group": vm_group, "count": count, "from": group.desired_count}},
        deployment_id=deployment.id,
        automatic=automatic,
    )
    deployment.status = DeploymentStatus.UPDATING
    return tx


def submit_vm_action(
    session: Session, vm_id: str, action: str, *, automatic: bool = False
) -> Transaction:
    operation = VM_ACTIONS.get(action.upper())
    if operation is None:
        raise InvalidRequest(f"unknown VM action {action!r}; use one of {', '.join(VM_ACTIONS)}")
    vm = session.get(Vm, vm_id)
    if vm is None:
        raise NotFound(f"no VM with id {vm_id}; find VM ids with escadm deployment show NAME")
    deployment = vm.vm_group.deployment
    if vm.state in (VmState.PENDING, VmState.UNDEPLOYING):
        raise Conflict(f"VM {vm.name} is {vm.state.value}; wait for its transaction to end")
    return _open_transaction(
        session,
        operation,
        deployment.tenant.name,
        deployment.name,
        {"vm_id": vm.id},
        deployment_id=deployment.id,
        automatic=automatic,
    )
