"""A deploy that fails removes the VMs it created, and its events say so."""

from __future__ import annotations

import psutil
from conftest import Node, live_vm_processes, wait_for
from faulty_vim import faulty_controller
from sqlalchemy import select

from esc.db.models import (
    Deployment,
    DeploymentStatus,
    Event,
    Transaction,
    TransactionState,
    Vm,
    VmState,
)
from esc.descriptor import parse_descriptor
from esc.engine.controller import Controller
from esc.vim.base import PermanentVimError

THREE_VMS = """
tenant: rb
deployment:
  name: three
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny, scaling: {min_active: 3, max_active: 3}}
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _ended(controller: Controller, tx_id: str) -> Transaction:
    def final() -> Transaction | None:
        with controller.db.read() as session:
            tx = session.get(Transaction, tx_id)
            return tx if tx.state.is_final else None

    return wait_for(final, 30, "the transaction ends")  # type: ignore[return-value]


def test_deploy_whose_third_vm_is_refused_is_rolled_back(node: Node) -> None:
    running: list[int] = []
    refusal = PermanentVimError("quota exceeded: 2 instances allowed in project rb")

    def third_refused(call: int) -> PermanentVimError | None:
        if call < 3:
            return None
        running.extend(p.pid for p in live_vm_processes(node.home))
        return refusal

    controller, _ = faulty_controller(node, third_refused)
    try:
        tx = controller.northbound.deploy(parse_descriptor(THREE_VMS))
        ended = _ended(controller, tx.id)
        assert ended.state is TransactionState.FAILED
        assert ended.error == f"the VIM refused: {refusal}"
        assert len(running) == 2, "the first two VMs were running when the third was refused"
        assert all(_gone(pid) for pid in running), "a VM of the failed deploy still runs"
        assert live_vm_processes(node.home) == []
        assert controller.vim.list_instances() == []

        with controller.db.read() as session:
            deployment = session.scalars(select(Deployment)).one()
            assert deployment.status is DeploymentStatus.ERROR  # kept for inspection
            assert [g.name for g in deployment.vm_groups] == ["g"]
            assert session.scalars(select(Vm)).all() == []
            found = session.scalars(
                select(Event).where(Event.transaction_id == tx.id).order_by(Event.id)
            ).all()
        types = [e.type for e in found]
        assert types.count("VM_DEPLOYED") == 2 and types.count("VM_UNDEPLOYED") == 2
        last = found[-1]
        assert (last.type, last.status) == ("SERVICE_ALIVE", "FAILURE")
        assert last.message == (
            f"deployment failed: the VIM refused: {refusal}; rolled back: 2 VMs it created removed"
        )

        # What is left is still managed: undeploy removes the deployment.
        gone = controller.northbound.undeploy("rb", "three")
        assert _ended(controller, gone.id).state is TransactionState.SUCCESS
        with controller.db.read() as session:
            assert session.scalars(select(Deployment)).all() == []
    finally:
        controller.stop(timeout=5)


def test_a_rollback_cut_short_by_a_stop_is_finished_at_the_next_start(node: Node) -> None:
    first, _ = faulty_controller(
        node, lambda call: PermanentVimError("image gone") if call == 3 else None
    )
    tx = first.northbound.deploy(parse_descriptor(THREE_VMS))
    _ended(first, tx.id)
    first.stop(timeout=5)
    # As a stop during the rollback leaves it: failed, rolling back, one VM not yet removed.
    with first.db.write() as session:
        row = session.get(Transaction, tx.id)
        row.state, row.finished_at, row.error = TransactionState.IN_PROGRESS, None, None
        row.lock_key = "rb/three"
        row.owner = None
        session.execute(Event.__table__.delete().where(Event.transaction_id == tx.id))
        group = session.scalars(select(Deployment)).one().vm_groups[0]
        session.add(
            Vm(
                vm_group_id=group.id,
                deployment_id=group.deployment_id,
                name="left",
                ordinal=9,
                state=VmState.DEPLOYED,
            )
        )
    second, vim = faulty_controller(node, lambda call: None)
    try:
        ended = _ended(second, tx.id)
        assert ended.state is TransactionState.FAILED
        assert ended.error.startswith("the VIM refused: image gone")
        assert vim.creates == 0, "the resumed transaction deployed again instead of rolling back"
        with second.db.read() as session:
            assert session.scalars(select(Vm)).all() == []
    finally:
        second.stop(timeout=5)
