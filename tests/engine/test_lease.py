"""The active role's lease: of two controllers on one database only the holder writes;
taking the role fences the previous holder at once, before it has noticed; a lease
that cannot be confirmed stops writes; and the new holder finishes the old one's
transaction in flight."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import Node, live_vm_processes, wait_for
from sqlalchemy import select

from esc.db.models import Tenant, Transaction, TransactionState
from esc.descriptor import parse_descriptor
from esc.engine import claims
from esc.engine.claims import NotOwner, fenced_write
from esc.engine.controller import Controller
from esc.engine.lease import DatabaseLease, NotActive
from esc.engine.op_mode import OpMode

SLOW_DEPLOY = """
tenant: pair
deployment:
  name: slow
  vm_groups:
    - name: g
      image: 'slow-boot:1.5'
      flavor: m1.tiny
      bootup_time: 30
      scaling: {min_active: 2, max_active: 2}
"""


class Pair:
    """Two controllers of one database, each with its own lease, neither active yet."""

    def __init__(self, node: Node) -> None:
        self.a = self._controller(node, "node-a", "198.18.30.11")
        self.b = self._controller(node, "node-b", "198.18.30.12")

    @staticmethod
    def _controller(node: Node, name: str, address: str) -> Controller:
        settings = node.settings.model_copy(deep=True)
        settings.node.name = name
        return Controller(
            node.home,
            settings,
            lease_for=lambda db: DatabaseLease(db, name, f"https://{address}:8443"),
        )

    def stop(self) -> None:
        for controller in (self.a, self.b):
            controller.stop(timeout=5)


@pytest.fixture
def pair(node: Node) -> Iterator[Pair]:
    made = Pair(node)
    yield made
    made.stop()


def test_only_the_holder_takes_writes_and_the_other_names_it(pair: Pair) -> None:
    pair.a.take_active()
    pair.a.northbound.create_tenant("on-a")
    with pytest.raises(NotActive) as refused:
        pair.b.northbound.create_tenant("on-b")
    assert str(refused.value) == (
        "node node-b is the standby: writes go to the active node node-a "
        "(https://198.18.30.11:8443) or to the pair's VIP"
    )
    with pytest.raises(NotActive):
        pair.b.northbound.set_op_mode(OpMode.MAINTENANCE)
    with pair.a.db.read() as session:
        assert session.scalars(select(Tenant.name)).all() == ["on-a"]


def test_taking_the_role_fences_the_previous_holder_before_it_notices(pair: Pair) -> None:
    # A holder well within its lease's time (on a loaded machine the deploy and the
    # other node's take-over below outlast the default 1 s): what is shown is that it
    # has not noticed, and is refused all the same.
    a_lease = pair.a.lease
    assert isinstance(a_lease, DatabaseLease)
    a_lease.ttl = 60.0
    pair.a.take_active()
    tx = pair.a.northbound.deploy(parse_descriptor(SLOW_DEPLOY))
    claim = claims.Claim(tx.id, "someone", 0, 0, False, pair.a.lease)
    a_lease._stop.set()  # a holder that has not renewed since: it still believes it holds
    epoch = a_lease.epoch

    pair.b.lease.acquire()

    assert a_lease.epoch == epoch and a_lease.held()  # it has not noticed ...
    with pytest.raises(NotActive) as refused:  # ... and its writes are refused all the same
        pair.a.northbound.create_tenant("late")
    assert "writes go to the active node node-b" in str(refused.value)
    with pytest.raises(NotOwner), fenced_write(pair.a.db, claim):
        pass
    pair.b.lease.release()


def test_an_unconfirmed_lease_stops_writes_until_it_is_renewed(pair: Pair) -> None:
    lease = pair.a.lease
    assert isinstance(lease, DatabaseLease)
    lease.ttl = 0.3
    pair.a.take_active()
    lease._stop.set()  # renewals stop, as when the standby does not acknowledge them
    time.sleep(0.5)
    assert not lease.held()
    with pytest.raises(NotActive, match="cannot confirm its active role just now"):
        pair.a.northbound.create_tenant("while-unconfirmed")
    assert lease.renew()
    pair.a.northbound.create_tenant("after-renewal")


def test_the_new_holder_finishes_the_old_ones_deploy_in_flight(node: Node, pair: Pair) -> None:
    pair.a.take_active()
    tx = pair.a.northbound.deploy(parse_descriptor(SLOW_DEPLOY))
    wait_for(lambda: _state(pair.a, tx.id) is TransactionState.IN_PROGRESS, 10, "the deploy starts")
    time.sleep(0.3)  # mid-way: its VMs are booting

    started = time.monotonic()
    pair.b.take_active()  # the old holder is not told: its lease thread finds out
    ended = wait_for(lambda: _final(pair.b, tx.id), 60, "the deploy ends on the new holder")
    assert ended.state is TransactionState.SUCCESS, ended.error
    assert ended.owner == pair.b.active.executor.claimant.id
    assert ended.resumes == 1
    assert time.monotonic() - started < claims.OWNER_TIMEOUT  # not after a heartbeat timeout
    # The old holder saw it lost the role, and dropped it.
    wait_for(lambda: pair.a.active is None, 5, "the old holder drops the role")
    assert pair.a.lease.epoch is None
    assert len(live_vm_processes(node.home)) == 2


def _state(controller: Controller, tx_id: str) -> TransactionState:
    with controller.db.read() as session:
        return session.get(Transaction, tx_id).state


def _final(controller: Controller, tx_id: str) -> Transaction | None:
    with controller.db.read() as session:
        tx = session.get(Transaction, tx_id)
        return tx if tx.state.is_final else None
