"""What each transaction does, as steps that are safe to run again.

Dispatched by name as in Tacker: each Operation has a `process` (the
steps), `succeed` / `fail` (the final model change and event, written
in the same database transaction as the transaction's end state) and an
optional `rollback`: steps run after `process` failed, before `fail`, to
undo what it did (a failed deploy removes the VMs it created).

Resuming after a crash relies on two things: the VIM driver's operations
are idempotent by VM id, and a VM's state changes (with its event) only
after the VIM call it records has returned. So a step repeated after a
crash re-issues an idempotent VIM call and never emits an event twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Event,
    Operation,
    RecoveryPolicy,
    Transaction,
    Vm,
    VmGroup,
    VmState,
)
from esc.db.session import Database
from esc.descriptor import validate_descriptor
from esc.engine.claims import Claim, fenced_write
from esc.engine.events import FAILURE, emit_for
from esc.engine.submit import apply_group_spec, ensure_vm_rows, new_group
from esc.monitor.liveness import vm_is_up
from esc.vim.base import Interface, Placement, VimDriver, VimError, VmSpec, Volume

log = logging.getLogger(__name__)

# A new VM usually answers within milliseconds: check often at first, then
# back off so a slow boot does not cost a busy loop.
ALIVE_POLL_FIRST = 0.02
ALIVE_POLL_MAX = 0.5


Succeed = Callable[[Session, Transaction], None]
Fail = Callable[[Session, Transaction, str], None]


class OperationFailed(Exception):
    """The transaction cannot reach its goal; the message is the reason shown to the operator."""


class Interrupted(Exception):
    """The node is stopping; the transaction is left for reconciliation at next start."""


@dataclass
class StepContext:
    """What a step works with. `vim` is fenced by the executor (no VIM call once the
    claim is lost) and `write()` commits only while the claim is current."""

    db: Database
    vim: VimDriver
    claim: Claim
    stopping: threading.Event

    @property
    def tx_id(self) -> str:
        return self.claim.tx_id

    def write(self) -> AbstractContextManager[Session]:
        return fenced_write(self.db, self.claim)

    def pause(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise Interrupted

    def request(self) -> dict[str, Any]:
        with self.db.read() as session:
            return dict(session.get(Transaction, self.tx_id).request)

    def step_done(self, key: str) -> bool:
        with self.db.read() as session:
            return bool(session.get(Transaction, self.tx_id).progress.get(key))

    def mark_step(self, session: Session, key: str) -> None:
        """Record `key` as done, in the caller's write, with the change it stands for."""
        tx = session.get(Transaction, self.tx_id)
        tx.progress = {**tx.progress, key: True}


def _pick(pool: list[str], ordinal: int) -> str | None:
    # Pools cover max_active (the descriptor checks): VM number N has the Nth address.
    return pool[ordinal] if ordinal < len(pool) else None


def _spec(vm: Vm) -> VmSpec:
    group = vm.vm_group
    return VmSpec(
        vm_id=vm.id,
        name=vm.name,
        image=group.image,
        flavor=group.flavor,
        day0_config=dict(group.day0_config),
        interfaces=tuple(
            Interface(
                network=i["network"],
                ip=_pick(i.get("ips", []), vm.ordinal),
                floating_ip=_pick(i.get("floating_ips", []), vm.ordinal),
                model=i.get("model", "virtio"),
                vlan=i.get("vlan"),
            )
            for i in group.interfaces or []
        ),
        volumes=tuple(Volume(v["name"], v["size_gb"]) for v in group.volumes or []),
        placement=Placement(**(group.placement or {})),
    )


def _vm_ids(ctx: StepContext, deployment_id: str, *states: VmState) -> list[str]:
    with ctx.db.read() as session:
        return list(
            session.scalars(
                select(Vm.id)
                .where(Vm.deployment_id == deployment_id, Vm.state.in_(states))
                .order_by(Vm.name)
            )
        )


def _remove_vm(ctx: StepContext, vm_id: str) -> None:
    ctx.vim.delete_vm(vm_id)
    with ctx.write() as session:
        vm = session.get(Vm, vm_id)
        if vm is not None:
            deployment = vm.vm_group.deployment
            emit_for(
                session,
                deployment,
                "VM_UNDEPLOYED",
                f"VM {vm.name} undeployed",
                transaction_id=ctx.tx_id,
                vm=vm,
            )
            session.delete(vm)


def _create_vm(ctx: StepContext, vm_id: str) -> None:
    with ctx.db.read() as session:
        spec = _spec(session.get(Vm, vm_id))
    status = ctx.vim.create_vm(spec)
    with ctx.write() as session:
        vm = session.get(Vm, vm_id)
        vm.state = VmState.DEPLOYED
        vm.address = status.address
        emit_for(
            session,
            vm.vm_group.deployment,
            "VM_DEPLOYED",
            f"VM {vm.name} deployed",
            transaction_id=ctx.tx_id,
            vm=vm,
        )


def _wait_alive(
    ctx: StepContext, vm_ids: list[str], timeout_of: Callable[[VmGroup], float], why: str
) -> None:
    """Wait until every VM is up: the VIM reports it RUNNING, then the liveness check of
    its address (esc.monitor.liveness) passes; each gets the timeout its vm_group sets."""
    with ctx.db.read() as session:
        deadlines = {
            vm_id: time.monotonic() + timeout_of(session.get(Vm, vm_id).vm_group)
            for vm_id in vm_ids
        }
    waiting = set(vm_ids)
    interval = ALIVE_POLL_FIRST
    while waiting:
        for vm_id in sorted(waiting):
            status = ctx.vim.status(vm_id)
            if vm_is_up(status):
                waiting.discard(vm_id)
                with ctx.write() as session:
                    vm = session.get(Vm, vm_id)
                    vm.state = VmState.ALIVE
                    vm.address = status.address
                    emit_for(
                        session,
                        vm.vm_group.deployment,
                        "VM_ALIVE",
                        f"VM {vm.name} is alive",
                        transaction_id=ctx.tx_id,
                        vm=vm,
                    )
            elif time.monotonic() > deadlines[vm_id]:
                with ctx.write() as session:
                    vm = session.get(Vm, vm_id)
                    vm.state = VmState.ERROR
                    name, limit = vm.name, timeout_of(vm.vm_group)
                raise OperationFailed(
                    f"VM {name} did not answer its health check within {why} {limit:g} s; "
                    "check its image, or raise the vm_group's " + why
                )
        if waiting:
            ctx.pause(interval)
            interval = min(ALIVE_POLL_MAX, interval * 2)


def converge(ctx: StepContext, deployment_id: str) -> None:
    """Bring the deployment's VMs to what its vm_groups ask for."""
    with ctx.write() as session:
        deployment = session.get(Deployment, deployment_id)
        for group in deployment.vm_groups:
            ensure_vm_rows(group, deployment.name)
    for vm_id in _vm_ids(ctx, deployment_id, VmState.UNDEPLOYING):
        _remove_vm(ctx, vm_id)
    for vm_id in _vm_ids(ctx, deployment_id, VmState.PENDING):
        _create_vm(ctx, vm_id)
    _wait_alive(
        ctx, _vm_ids(ctx, deployment_id, VmState.DEPLOYED), lambda g: g.bootup_time, "bootup_time"
    )


def _deployment_of(session: Session, tx_id: str) -> Deployment | None:
    deployment_id = session.get(Transaction, tx_id).deployment_id
    return session.get(Deployment, deployment_id) if deployment_id else None


# Deployment-level outcomes ----------------------------------------------------


def deployment_outcome(event: str, done: str, failed: str) -> tuple[Succeed, Fail]:
    """The end of a deployment-wide transaction: status ACTIVE or ERROR, and `event`
    with SUCCESS or FAILURE ({name}, {reason} and a scaling request's {vm_group},
    {from} and {count} are filled in)."""

    def succeed(session: Session, tx: Transaction) -> None:
        deployment = _deployment_of(session, tx.id)
        deployment.status = DeploymentStatus.ACTIVE
        fields = {"name": deployment.name, **(tx.request.get("scale") or {})}
        emit_for(session, deployment, event, done.format(**fields), transaction_id=tx.id)

    def fail(session: Session, tx: Transaction, reason: str) -> None:
        deployment = _deployment_of(session, tx.id)
        if deployment is None:  # a resumed undeploy may have removed it already
            return
        deployment.status = DeploymentStatus.ERROR
        emit_for(
            session,
            deployment,
            event,
            failed.format(reason=reason),
            transaction_id=tx.id,
            status=FAILURE,
        )

    return succeed, fail


deploy_succeed, _deploy_failed = deployment_outcome(
    "SERVICE_ALIVE", "deployment {name} is alive", "deployment failed: {reason}"
)
_updated, _update_failed = deployment_outcome(
    "SERVICE_UPDATED", "deployment {name} updated", "update failed: {reason}"
)
_scaled_out, _scale_out_failed = deployment_outcome(
    "VM_SCALE_OUT",
    "vm_group {vm_group} of {name} scaled out from {from} to {count} VMs",
    "scale out failed: {reason}",
)
_scaled_in, _scale_in_failed = deployment_outcome(
    "VM_SCALE_IN",
    "vm_group {vm_group} of {name} scaled in from {from} to {count} VMs",
    "scale in failed: {reason}",
)


def _scale_direction(tx: Transaction) -> str | None:
    """ "out" or "in" for a scaling request that changes the count, else None."""
    scale = tx.request.get("scale")
    if not scale or scale.get("from") is None or scale["from"] == scale["count"]:
        return None
    return "out" if scale["count"] > scale["from"] else "in"


def update_succeed(session: Session, tx: Transaction) -> None:
    outcome = {"out": _scaled_out, "in": _scaled_in}.get(_scale_direction(tx), _updated)
    outcome(session, tx)


def update_fail(session: Session, tx: Transaction, reason: str) -> None:
    outcome = {"out": _scale_out_failed, "in": _scale_in_failed}.get(
        _scale_direction(tx), _update_failed
    )
    outcome(session, tx, reason)


_, undeploy_fail = deployment_outcome("SERVICE_UNDEPLOYED", "", "undeploy failed: {reason}")


# DEPLOY ---------------------------------------------------------------------


def deploy_process(ctx: StepContext) -> None:
    with ctx.db.read() as session:
        deployment_id = session.get(Transaction, ctx.tx_id).deployment_id
    converge(ctx, deployment_id)


# Progress key set when a failed transaction's rollback begins (its value: the
# failure), so a rollback cut short by a stop or crash is resumed, not the process.
ROLLBACK = "rollback"


def deploy_rollback(ctx: StepContext) -> None:
    """Remove every VM the failed deploy created (on the VIM and its row).

    The deployment row stays, in ERROR with its vm_groups and no VM: what was
    asked and why it failed stay visible; undeploy removes it, an update retries.
    """
    with ctx.db.read() as session:
        deployment_id = session.get(Transaction, ctx.tx_id).deployment_id
    for vm_id in _vm_ids(ctx, deployment_id, *VmState):
        with ctx.db.read() as session:
            created = session.get(Vm, vm_id).state is not VmState.PENDING
        if created:
            _remove_vm(ctx, vm_id)
        else:  # never created, or its creation did not return: nothing to announce
            ctx.vim.delete_vm(vm_id)
            with ctx.write() as session:
                session.delete(session.get(Vm, vm_id))


def deploy_fail(session: Session, tx: Transaction, reason: str) -> None:
    if ROLLBACK in tx.progress:
        removed = session.scalar(
            select(func.count()).where(Event.transaction_id == tx.id, Event.type == "VM_UNDEPLOYED")
        )
        reason += f"; rolled back: {removed} VM{'' if removed == 1 else 's'} it created removed"
    _deploy_failed(session, tx, reason)


# UNDEPLOY -------------------------------------------------------------------


def undeploy_process(ctx: StepContext) -> None:
    with ctx.write() as session:
        deployment = _deployment_of(session, ctx.tx_id)
        for group in deployment.vm_groups:
            for vm in group.vms:
                vm.state = VmState.UNDEPLOYING
        deployment_id = deployment.id
    for vm_id in _vm_ids(ctx, deployment_id, VmState.UNDEPLOYING):
        _remove_vm(ctx, vm_id)


def undeploy_succeed(session: Session, tx: Transaction) -> None:
    deployment = _deployment_of(session, tx.id)
    if deployment is None:  # already removed before a crash; the event went with it
        return
    emit_for(
        session,
        deployment,
        "SERVICE_UNDEPLOYED",
        f"deployment {deployment.name} undeployed",
        transaction_id=tx.id,
    )
    session.delete(deployment)


# UPDATE (descriptor change or scaling) --------------------------------------


def _apply_update(session: Session, deployment: Deployment, request: dict[str, Any]) -> None:
    if "descriptor" in request:
        descriptor = validate_descriptor(request["descriptor"])
        wanted = {g.name: g for g in descriptor.deployment.vm_groups}
        for group in deployment.vm_groups:
            if group.name in wanted:
                apply_group_spec(group, wanted.pop(group.name))
            else:  # a vm_group left out of the new descriptor is removed
                group.desired_count = 0
        for spec in wanted.values():
            group = new_group(spec)
            group.deployment_id = deployment.id
            deployment.vm_groups.append(group)
        deployment.descriptor = descriptor.model_dump(mode="json")
    if "scale" in request:
        scale = request["scale"]
        group = next(g for g in deployment.vm_groups if g.name == scale["vm_group"])
        group.desired_count = scale["count"]


def update_process(ctx: StepContext) -> None:
    if not ctx.step_done("model_applied"):
        request = ctx.request()
        with ctx.write() as session:
            _apply_update(session, _deployment_of(session, ctx.tx_id), request)
            ctx.mark_step(session, "model_applied")
    with ctx.db.read() as session:
        deployment_id = session.get(Transaction, ctx.tx_id).deployment_id
    converge(ctx, deployment_id)
    with ctx.write() as session:
        deployment = session.get(Deployment, deployment_id)
        kept = {g["name"] for g in deployment.descriptor["deployment"]["vm_groups"]}
        for group in list(deployment.vm_groups):
            if group.name not in kept:  # its VMs were removed by converge()
                deployment.vm_groups.remove(group)


# VM actions -----------------------------------------------------------------


def _require_vm(ctx: StepContext) -> str:
    vm_id = ctx.request()["vm_id"]
    with ctx.db.read() as session:
        if session.get(Vm, vm_id) is None:
            raise OperationFailed(f"VM {vm_id} no longer exists")
    return vm_id


def _set_vm_state(
    ctx: StepContext, vm_id: str, state: VmState, event: str, message: str, status: str = "SUCCESS"
) -> None:
    with ctx.write() as session:
        vm = session.get(Vm, vm_id)
        vm.state = state
        vm.address = ctx.vim.status(vm_id).address
        emit_for(
            session,
            vm.vm_group.deployment,
            event,
            message.format(vm=vm.name),
            transaction_id=ctx.tx_id,
            vm=vm,
            status=status,
        )


def vm_start_process(ctx: StepContext) -> None:
    vm_id = _require_vm(ctx)
    ctx.vim.start_vm(vm_id)
    _wait_alive(ctx, [vm_id], lambda g: g.bootup_time, "bootup_time")
    _set_vm_state(ctx, vm_id, VmState.ALIVE, "VM_STARTED", "VM {vm} started")


def vm_stop_process(ctx: StepContext) -> None:
    vm_id = _require_vm(ctx)
    ctx.vim.stop_vm(vm_id)
    _set_vm_state(ctx, vm_id, VmState.STOPPED, "VM_STOPPED", "VM {vm} stopped")


def vm_reboot_process(ctx: StepContext) -> None:
    vm_id = _require_vm(ctx)
    if not ctx.step_done("rebooted"):
        ctx.vim.reboot_vm(vm_id)
        with ctx.write() as session:
            ctx.mark_step(session, "rebooted")
    _wait_alive(ctx, [vm_id], lambda g: g.bootup_time, "bootup_time")
    _set_vm_state(ctx, vm_id, VmState.ALIVE, "VM_REBOOTED", "VM {vm} rebooted")


def _policy(ctx: StepContext, vm_id: str) -> RecoveryPolicy:
    with ctx.db.read() as session:
        return session.get(Vm, vm_id).vm_group.recovery_policy


def vm_recover_process(ctx: StepContext) -> None:
    """Recover one VM following its vm_group's recovery policy."""
    vm_id = _require_vm(ctx)
    if not ctx.step_done("recovery_started"):
        with ctx.write() as session:
            vm = session.get(Vm, vm_id)
            emit_for(
                session,
                vm.vm_group.deployment,
                "VM_RECOVERY_INIT",
                f"recovery of VM {vm.name} started",
                transaction_id=ctx.tx_id,
                vm=vm,
            )
            ctx.mark_step(session, "recovery_started")
    policy = _policy(ctx, vm_id)
    if policy in (RecoveryPolicy.REBOOT_THEN_REDEPLOY, RecoveryPolicy.REBOOT_ONLY):
        try:
            if not ctx.step_done("rebooted"):
                ctx.vim.reboot_vm(vm_id)
                with ctx.write() as session:
                    ctx.mark_step(session, "rebooted")
            _wait_alive(ctx, [vm_id], lambda g: g.recovery_wait_time, "recovery_wait_time")
            return
        except (OperationFailed, VimError) as exc:
            # A VM whose instance is gone (restored from a backup older than it, or
            # removed on the VIM) cannot be rebooted: it can only be redeployed.
            if policy is RecoveryPolicy.REBOOT_ONLY:
                raise OperationFailed(f"reboot did not bring it back: {exc}") from exc
            log.info("VM %s: reboot did not help (%s); redeploying", vm_id, exc)
    if not ctx.step_done("redeployed"):
        ctx.vim.delete_vm(vm_id)
        with ctx.db.read() as session:
            spec = _spec(session.get(Vm, vm_id))
        ctx.vim.create_vm(spec)
        with ctx.write() as session:
            ctx.mark_step(session, "redeployed")
    _wait_alive(ctx, [vm_id], lambda g: g.bootup_time, "bootup_time")


def _vm_event_on_end(
    event: str, message: str, status: str = "SUCCESS", state: VmState | None = None
) -> Callable[..., None]:
    def finish(session: Session, tx: Transaction, reason: str = "") -> None:
        vm = session.get(Vm, tx.request.get("vm_id"))
        if vm is None:
            return
        if state is not None:
            vm.state = state
        emit_for(
            session,
            vm.vm_group.deployment,
            event,
            message.format(vm=vm.name, reason=reason),
            transaction_id=tx.id,
            vm=vm,
            status=status,
        )

    return finish


_recovered = _vm_event_on_end(
    "VM_RECOVERY_COMPLETE", "recovery of VM {vm} complete", state=VmState.ALIVE
)
_recovery_failed = _vm_event_on_end(
    "VM_RECOVERY_FAILED",
    "recovery of VM {vm} failed: {reason}",
    status=FAILURE,
    state=VmState.ERROR,
)


def recover_succeed(session: Session, tx: Transaction) -> None:
    _recovered(session, tx)
    vm = session.get(Vm, tx.request.get("vm_id"))
    if vm is not None:
        vm.recovery_attempts = 0  # a fresh budget for the next failure


def recover_fail(session: Session, tx: Transaction, reason: str) -> None:
    _recovery_failed(session, tx, reason)
    vm = session.get(Vm, tx.request.get("vm_id"))
    if vm is None or not tx.automatic:
        return
    limit = vm.vm_group.max_recovery_attempts
    if vm.recovery_attempts >= limit:
        # MONA stops here: say so once, in the words an operator can act on.
        emit_for(
            session,
            vm.vm_group.deployment,
            "VM_MANUAL_RECOVERY_NEEDED",
            f"VM {vm.name} is in error after {vm.recovery_attempts} automatic recovery "
            f"attempts (recovery_policy max_retries {limit}); fix the cause, then recover it "
            f'by hand: POST /v0/vms/{vm.id}/actions {{"action": "RECOVER"}}',
            transaction_id=tx.id,
            vm=vm,
            status=FAILURE,
        )


def _vm_failed(session: Session, tx: Transaction, reason: str) -> None:
    vm = session.get(Vm, tx.request.get("vm_id"))
    if vm is None:
        return
    emit_for(
        session,
        vm.vm_group.deployment,
        f"{tx.operation.value}_FAILED",
        f"{tx.operation.value} of VM {vm.name} failed: {reason}",
        transaction_id=tx.id,
        vm=vm,
        status=FAILURE,
    )


def _nothing(session: Session, tx: Transaction) -> None:
    """The process already recorded the VM's new state with its event."""


@dataclass(frozen=True)
class OperationHandler:
    process: Callable[[StepContext], None]
    succeed: Succeed
    fail: Fail
    # Undoes what a failed `process` did; steps safe to run again, like process's.
    rollback: Callable[[StepContext], None] | None = None


OPERATIONS: dict[Operation, OperationHandler] = {
    Operation.DEPLOY: OperationHandler(
        deploy_process, deploy_succeed, deploy_fail, rollback=deploy_rollback
    ),
    Operation.UNDEPLOY: OperationHandler(undeploy_process, undeploy_succeed, undeploy_fail),
    Operation.UPDATE: OperationHandler(update_process, update_succeed, update_fail),
    Operation.VM_START: OperationHandler(vm_start_process, _nothing, _vm_failed),
    Operation.VM_STOP: OperationHandler(vm_stop_process, _nothing, _vm_failed),
    Operation.VM_REBOOT: OperationHandler(vm_reboot_process, _nothing, _vm_failed),
    Operation.VM_RECOVER: OperationHandler(vm_recover_process, recover_succeed, recover_fail),
}
