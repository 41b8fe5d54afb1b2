"""What MONA does when a KPI changes state: the rule's actions.

An action named in a rule is looked up in the dynamic mappings in force:
  ESC_POST_EVENT  esc_event VM_RECOVER, VM_SCALE_OUT or VM_SCALE_IN: an
                  automatic transaction, written to the database like any
                  northbound write (refused in MAINTENANCE, one per
                  deployment); the engine picks it up from there
  SCRIPT          a custom script from the database (see scripts.py)
  LOG             a line in the MONITORING log
Each function here runs in a worker thread (they touch the database) and
returns an Outcome: whether a transaction was started, and a sentence for
the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from esc.db.models import Vm, VmState
from esc.db.session import Database
from esc.engine import op_mode, submit
from esc.errors import EscError
from esc.monitor import mode

log = logging.getLogger("esc.monitor")


@dataclass(frozen=True)
class Outcome:
    started: bool
    message: str


@dataclass(frozen=True)
class Firing:
    """A KPI changed state: what changed, and where."""

    event_name: str
    state: bool
    value: float | None
    tenant: str
    deployment: str
    vm_group: str
    deployment_id: str = ""
    vm_id: str | None = None
    vm_name: str | None = None
    address: str | None = None

    @property
    def where(self) -> str:
        target = f"VM {self.vm_name}" if self.vm_name else f"vm_group {self.vm_group}"
        return f"{target} of {self.tenant}/{self.deployment}"

    def environment(self, action: str) -> dict[str, str]:
        """The event, as a custom script sees it."""
        env = {
            "ESC_ACTION": action,
            "ESC_EVENT_NAME": self.event_name,
            "ESC_EVENT_STATE": "TRUE" if self.state else "FALSE",
            "ESC_TENANT": self.tenant,
            "ESC_DEPLOYMENT": self.deployment,
            "ESC_VM_GROUP": self.vm_group,
            "ESC_METRIC_VALUE": "" if self.value is None else f"{self.value:g}",
        }
        if self.vm_id:
            env |= {
                "ESC_VM_ID": self.vm_id,
                "ESC_VM_NAME": self.vm_name or "",
                "ESC_VM_ADDRESS": self.address or "",
            }
        return env


class _Skip(Exception):
    pass


def _may_act(session: Session) -> None:
    """Automatic actions wait for OPERATION mode and running monitoring (checked in the
    writing transaction, so a switch to MAINTENANCE cannot slip in between)."""
    op_mode.require_operation(session)
    if mode.current(session) is mode.MonitorMode.STOPPED:
        raise _Skip("monitoring is stopped")


def recover(db: Database, firing: Firing) -> Outcome:
    """An automatic VM_RECOVER transaction, while the VM has attempts left."""
    try:
        with db.write() as session:
            _may_act(session)
            vm = session.get(Vm, firing.vm_id)
            if vm is None or vm.state not in (VmState.ALIVE, VmState.ERROR):
                state = "gone" if vm is None else vm.state.value
                raise _Skip(f"the VM is {state}")
            limit = vm.vm_group.max_recovery_attempts
            if vm.recovery_attempts >= limit:
                raise _Skip(f"its {limit} automatic recovery attempts are used up")
            tx = submit.submit_vm_action(session, vm.id, "RECOVER", automatic=True)
            vm.recovery_attempts += 1
            attempt = vm.recovery_attempts
    except (EscError, _Skip) as exc:
        return Outcome(False, f"recovery of {firing.where} not started: {exc}")
    return Outcome(
        True,
        f"recovery of {firing.where} started: transaction {tx.id} (attempt {attempt}/{limit})",
    )


def scale(db: Database, firing: Firing, step: int) -> Outcome:
    """An automatic scaling transaction by `step` VMs, within min_active..max_active."""
    word = "out" if step > 0 else "in"
    try:
        with db.write() as session:
            _may_act(session)
            deployment = submit.find_deployment(session, firing.tenant, firing.deployment)
            group = next((g for g in deployment.vm_groups if g.name == firing.vm_group), None)
            if group is None:
                raise _Skip("the vm_group is gone")
            if not group.elastic:
                raise _Skip("the vm_group is not elastic (scaling: elastic: true)")
            target = group.desired_count + step
            if not group.min_active <= target <= group.max_active:
                bound = "max_active" if step > 0 else "min_active"
                raise _Skip(f"it has {group.desired_count} VMs, its {bound}")
            tx = submit.submit_scale(
                session, firing.tenant, firing.deployment, group.name, target, automatic=True
            )
            was = group.desired_count
    except (EscError, _Skip) as exc:
        return Outcome(False, f"scale {word} of {firing.where} not started: {exc}")
    return Outcome(
        True, f"scale {word} of {firing.where} started: {was} -> {target} VMs, transaction {tx.id}"
    )


POST_EVENTS = {
    "VM_RECOVER": recover,
    "VM_SCALE_OUT": lambda db, firing: scale(db, firing, +1),
    "VM_SCALE_IN": lambda db, firing: scale(db, firing, -1),
}
