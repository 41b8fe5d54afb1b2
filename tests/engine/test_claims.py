"""Claims: controllers sharing one database never both run a transaction, and a
transaction whose executor died is resumed by the next one that starts."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from unittest import mock

import pytest
from conftest import Node, live_vm_processes, wait_for
from sqlalchemy import func, select

from esc.db.migrate import upgrade_to_head
from esc.db.models import (
    Event,
    ExecutorOwner,
    Operation,
    Transaction,
    TransactionState,
    utcnow,
)
from esc.db.session import Database
from esc.descriptor import parse_descriptor
from esc.engine import claims, executor
from esc.engine.claims import Claimant, NotOwner, fenced_write
from esc.engine.controller import Controller
from esc.engine.step_vim import RetryPolicy, StepVim
from esc.vim.base import VimDriver, VmSpec
from esc.vim.local import LocalVim

THREE_VMS = """
tenant: ha
deployment:
  name: three
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny, scaling: {min_active: 3, max_active: 3}}
"""


def _final(controller: Controller, tx_id: str, timeout: float = 60) -> Transaction:
    def ended() -> Transaction | None:
        with controller.db.read() as session:
            tx = session.get(Transaction, tx_id)
            return tx if tx.state.is_final else None

    return wait_for(ended, timeout, f"transaction {tx_id} ends")  # type: ignore[return-value]


def _count(db: Database, tx_id: str, type_: str) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.count()).where(Event.transaction_id == tx_id, Event.type == type_)
        )


def test_second_controller_on_the_database_does_not_run_the_first_ones_deploy(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: Counter[str] = Counter()
    guard = threading.Lock()
    create_vm = LocalVim.create_vm

    def counted(self: LocalVim, spec: VmSpec):  # type: ignore[no-untyped-def]
        with guard:
            created[spec.vm_id] += 1
        time.sleep(0.5)  # so the deploy is mid-way when the second controller starts
        return create_vm(self, spec)

    monkeypatch.setattr(LocalVim, "create_vm", counted)
    first = Controller(node.home, node.settings)
    first.start()
    second = Controller(node.home, node.settings)
    try:
        tx = first.northbound.deploy(parse_descriptor(THREE_VMS))
        wait_for(lambda: created, 10, "the first create_vm")
        second.start()
        ended = _final(first, tx.id)
        assert ended.state is TransactionState.SUCCESS, ended.error
        assert sorted(created.values()) == [1, 1, 1], f"create_vm calls per VM: {created}"
        assert _count(first.db, tx.id, "VM_DEPLOYED") == 3
        assert _count(first.db, tx.id, "VM_ALIVE") == 3
        assert ended.owner == first.active.executor.claimant.id and ended.epoch == 1
        assert len(live_vm_processes(node.home)) == 3
    finally:
        second.stop()
        first.stop()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


OTHER_HOST = "some-other-host"


@pytest.mark.parametrize(
    ("how", "resumed"),
    [
        ("heartbeat older than the bound", True),
        ("process gone on this host", True),
        ("owner row gone", True),
        ("alive on another host", False),
    ],
)
def test_transaction_of_a_dead_owner_is_resumed_by_the_next_start(
    node: Node, how: str, resumed: bool
) -> None:
    slow = THREE_VMS.replace("image: healthy", "image: 'slow-boot:1.5'").replace(
        "flavor: m1.tiny,", "flavor: m1.tiny, bootup_time: 30,"
    )
    first = Controller(node.home, node.settings)
    first.start()
    tx = first.northbound.deploy(parse_descriptor(slow))
    wait_for(lambda: _count(first.db, tx.id, "VM_DEPLOYED") == 3, 20, "VMs created")
    assert first.stop(timeout=5) == [tx.id]

    # The transaction as its executor left it when it died, `how` it died.
    fresh = utcnow()
    owner = ExecutorOwner(
        id="dead-or-alive",
        node="other",
        host=OTHER_HOST,
        pid=1,
        process_started=0.0,
        role=claims.ACTIVE,
        started_at=fresh,
        heartbeat_at=fresh,
    )
    if how == "heartbeat older than the bound":
        owner.heartbeat_at = fresh - timedelta(seconds=claims.OWNER_TIMEOUT + 1)
    elif how == "process gone on this host":
        owner.host, owner.pid, owner.process_started = socket.gethostname(), _dead_pid(), 1.0
    with first.db.write() as session:
        session.get(Transaction, tx.id).owner = owner.id
        if how != "owner row gone":
            session.add(owner)

    alive_before = _count(first.db, tx.id, "VM_ALIVE")
    second = Controller(node.home, node.settings)
    second.start()
    try:
        if resumed:
            ended = _final(second, tx.id)
            assert ended.state is TransactionState.SUCCESS, ended.error
            assert ended.resumes == 1
            assert ended.owner == second.active.executor.claimant.id and ended.epoch == 2
        else:
            time.sleep(1.0)
            with second.db.read() as session:
                left = session.get(Transaction, tx.id)
            assert left.state is TransactionState.IN_PROGRESS
            assert (left.owner, left.epoch, left.resumes) == ("dead-or-alive", 1, 0)
            assert _count(second.db, tx.id, "VM_ALIVE") == alive_before  # no step ran
    finally:
        second.stop()


def test_a_running_controller_takes_over_from_one_that_died(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor, "TAKE_OVER_INTERVAL", 0.5)
    dying = Controller(node.home, node.settings)
    dying.start()
    survivor = Controller(node.home, node.settings)
    try:
        slow = THREE_VMS.replace("image: healthy", "image: 'slow-boot:1.5'").replace(
            "flavor: m1.tiny,", "flavor: m1.tiny, bootup_time: 30,"
        )
        tx = dying.northbound.deploy(parse_descriptor(slow))
        wait_for(lambda: _count(dying.db, tx.id, "VM_DEPLOYED") == 3, 20, "VMs created")
        # Started once the dying one holds the transaction: a survivor already running
        # could otherwise pick the QUEUED transaction up first.
        survivor.start()
        assert dying.stop(timeout=5) == [tx.id]  # its owner row goes with it
        ended = _final(survivor, tx.id)
        assert ended.state is TransactionState.SUCCESS, ended.error
        assert ended.owner == survivor.active.executor.claimant.id and ended.resumes == 1
        assert _count(survivor.db, tx.id, "VM_ALIVE") == 3
        assert len(live_vm_processes(node.home)) == 3
    finally:
        survivor.stop()


@pytest.fixture
def database(db_url: str):  # type: ignore[no-untyped-def]
    db = Database(db_url)
    upgrade_to_head(db.engine)
    yield db
    db.dispose()


def _queued(db: Database, tx_id: str) -> None:
    with db.write() as session:
        session.add(
            Transaction(
                id=tx_id,
                operation=Operation.UNDEPLOY,
                state=TransactionState.QUEUED,
                tenant="t",
                deployment_name="d",
                lock_key=f"t/{tx_id}",
                request={},
                progress={},
            )
        )


def test_only_one_of_many_racing_claimants_wins(database: Database) -> None:
    _queued(database, "raced")
    claimants = [Claimant(database, "n") for _ in range(8)]
    for claimant in claimants:
        claimant.register()
    start = threading.Barrier(len(claimants))
    won = []

    def race(claimant: Claimant) -> None:
        start.wait()
        if claimant.claim("raced") is not None:
            won.append(claimant.id)

    threads = [threading.Thread(target=race, args=(c,)) for c in claimants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1
    with database.read() as session:
        tx = session.get(Transaction, "raced")
        assert (tx.state, tx.owner, tx.epoch) == (TransactionState.IN_PROGRESS, won[0], 1)


def test_a_superseded_claim_writes_nothing_and_calls_no_vim(database: Database) -> None:
    _queued(database, "taken")
    old, new = Claimant(database, "n"), Claimant(database, "n")
    old.register()
    new.register()
    stale = old.claim("taken")
    assert stale is not None
    assert new.claim("taken") is None, "a live owner's transaction was taken"
    old.retire()  # as if it had been declared dead
    current = new.claim("taken")
    assert current is not None and current.epoch == 2 and current.resumes == 1

    inner = mock.create_autospec(VimDriver, instance=True)
    inner.name = "counted"
    with pytest.raises(NotOwner), fenced_write(database, stale) as session:
        session.get(Transaction, "taken").progress = {"written": True}
    with pytest.raises(NotOwner):
        StepVim(inner, database, stale, RetryPolicy(1, 1.0), threading.Event()).create_vm(
            VmSpec("x", "x", "healthy", "m1.tiny")
        )
    inner.create_vm.assert_not_called()
    with fenced_write(database, current) as session:
        session.get(Transaction, "taken").progress = {"written": True}
    with database.read() as session:
        assert session.get(Transaction, "taken").progress == {"written": True}
