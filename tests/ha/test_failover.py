"""An HA pair's failover and switchover under a steady write load through the VIP.

Two network-namespace test hosts run a pair as an operator sets it up (`escadm init
--ha` on both, the pair file, `escadm start`), with the lab's node provider (the host
agent in the root namespace, on the gateway address) to fence a node and keep the
witness record. A client in the root namespace writes through the VIP every 10 ms;
after each fault every acknowledged write must be on the surviving active, and no
write may be acknowledged by the old active once the new one took one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from esc_pair import Node, Pair, wait_for
from needs import running_pair
from writes import WriteLoad, figures

from esc.config import NodeHome
from esc.node.processes import live_record

NET = "198.18.60"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "fo"


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    yield from running_pair(f"{NET}.0/24", PREFIX, kad_vri=66, vim_host=True, keep_env="FO_KEEP")


# Host-down failovers of this test alone, each at a random moment; with the four other
# cases below that kill the active host, twenty in this module.
HOST_DOWN_ROUNDS = 16


def _under_load(pair: Pair, fault, label: str) -> dict:
    """Run `fault` under the write load; then every acknowledged write must be on the
    surviving active, and the old active may not have acknowledged a write once the
    new one took over."""
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix=label)
    load.start()
    try:
        load.wait_acks(30, 30)
        time.sleep(random.uniform(0, 1.0))
        old = load.acks[-1].node
        fault_at = time.time()
        fault()
        wait_for(
            lambda: any(a.acked > fault_at and a.node != old for a in load.acks),
            60,
            f"a write acknowledged after {label}\n{pair.logs()}",
        )
        time.sleep(1.0)
    finally:
        load.stop()
    result = figures(load, fault_at, pair.tenants())
    print(f"\n{label}: {json.dumps(result.as_json())}")
    assert result.lost == [], f"acknowledged writes lost: {result.lost[:10]}"
    assert result.overlap == [], "the old active acknowledged writes after the new one did"
    return result.as_json()


@pytest.mark.parametrize("round_", range(1, HOST_DOWN_ROUNDS + 1))
def test_the_active_host_dies_and_the_standby_takes_over_without_losing_a_write(
    pair: Pair, round_: int
) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.lab.host_down(old.ns), f"host-down-{round_}")
    assert result["old_primary"] == old.name and result["new_primary"] == new.name
    assert result["failover_s"] < 5, result
    assert pair.status(new) == "ESC status=0 ESC HA Active Healthy"

    # The old active comes back (it was fenced): it rejoins as the standby by itself,
    # by pg_rewind.
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)
    assert "by rewind" in _last_follow(old), _last_follow(old)


def _last_follow(node: Node) -> str:
    lines = (node.home / "log" / "pgsql.log").read_text().splitlines()
    return next((line for line in reversed(lines) if "following" in line), "")


def test_an_old_active_whose_data_cannot_be_rewound_rejoins_by_a_fresh_clone(
    pair: Pair,
) -> None:
    old = pair.active()
    new = pair.other(old)
    _under_load(pair, lambda: pair.lab.host_down(old.ns), "host-down-damaged")
    # Its WAL is gone (a disk cleaned by hand, a failed earlier rewind): pg_rewind
    # cannot find where the two diverged.
    for segment in (old.home / "data" / "pgsql" / "pg_wal").iterdir():
        if segment.is_file():
            segment.unlink()
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)
    assert "by clone" in _last_follow(old), _last_follow(old)


def _kill_group(node: Node, service: str) -> None:
    record = live_record(NodeHome(node.home).run, service)
    assert record is not None, f"{service} does not run on {node.name}"
    os.killpg(record.pgid, signal.SIGKILL)


def test_escmanager_alone_dies_on_the_active(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: _kill_group(old, "escmanager"), "escmanager-dies")
    # Its health fails at once, so keepalived moves the VIP; nothing on the old node
    # can demote its PostgreSQL any more, so the new active fenced it.
    assert result["new_primary"] == new.name
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_postgresql_alone_dies_on_the_active(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: _kill_group(old, "pgsql"), "pgsql-dies")
    # Its lease cannot be renewed and its health fails: the VIP moves. The new active
    # finds no PostgreSQL answering on the old node, so it needs no fence; the old
    # node's PostgreSQL, restarted by its supervisor, follows the new active.
    assert result["new_primary"] == new.name
    pair.wait_pair(active=new)


def test_the_link_between_the_nodes_is_cut_while_both_reach_the_gateway(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    try:
        result = _under_load(pair, lambda: pair.lab.partition(old.ns, new.ns), "partition")
    finally:
        pair.lab.heal(old.ns, new.ns)
    # The standby could not tell a dead active from a cut link, so it fenced it.
    assert result["new_primary"] == new.name
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_a_planned_switchover_loses_no_write(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.ok(old, "switchover"), "switchover")
    assert result["new_primary"] == new.name
    pair.wait_pair(active=new)
    # The operator's health check passes on both: a standby's engine is the active's.
    for node in (new, old):
        assert pair.ok(node, "health").strip() == "ESC HEALTH PASSED"
    standby = json.loads(pair.ok(old, "health", "--json"))
    engine = next(c for c in standby["checks"] if c["name"] == "engine")
    assert "it runs on the pair's active node" in engine["detail"], engine


def test_maintenance_mode_survives_a_failover(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    with pair.client() as client:
        assert client.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    pair.lab.host_down(old.ns)
    wait_for(
        lambda: pair.status(new) == "ESC status=0 ESC HA Active Healthy",
        30,
        f"{new.name} takes over\n{pair.logs()}",
    )
    with pair.client() as client:
        assert client.get("/esc/op_mode").json()["mode"] == "MAINTENANCE"
        refused = client.post("/v0/tenants", json={"name": "during-maintenance"})
        assert refused.status_code == 503 and refused.headers["ESC-Node"] == new.name
        assert client.put("/esc/op_mode", json={"mode": "OPERATION"}).status_code == 200
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_a_standby_that_missed_writes_is_never_promoted_by_itself(pair: Pair) -> None:
    active = pair.active()
    standby = pair.other(active)
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="alone")
    load.start()
    try:
        load.wait_acks(20, 30)
        lost_at = time.time()
        pair.lab.host_down(standby.ns)
        # The active marks its lost standby outdated at the provider, then commits alone.
        ack = load.wait_ack_from(active.name, after=lost_at + 4.0, timeout=30)
        assert ack.acked - lost_at < 15, "writes waited too long for the lost standby"
    finally:
        load.stop()
    alone = [load.name(a.seq) for a in load.acks if a.sent > lost_at + 4.0]
    both = {load.name(a.seq) for a in load.acks if a.acked < lost_at}  # on both nodes
    pair.lab.host_down(active.ns)

    # The old standby comes back alone: keepalived makes it MASTER, but its copy lacks
    # what the active wrote alone, so it goes FAULT and says why.
    pair.power_on_and_start(standby)
    wait_for(
        lambda: pair.status(standby).startswith(
            "ESC status=1 ESC HA Fault: the active marked this node outdated"
        ),
        60,
        f"{standby.name} goes FAULT: {pair.status(standby)}\n{pair.logs()}",
    )
    assert all(str(a.ip) != pair.vip for a in pair.lab.addresses(standby.ns))

    # The operator's explicit choice: it takes the role, without what only the lost
    # active had.
    refused = pair.escadm(standby, "ha", "force-active")
    assert refused.returncode == 2 and "--discard-unreplicated" in refused.stderr
    pair.ok(standby, "ha", "force-active", "--discard-unreplicated")
    wait_for(
        lambda: pair.status(standby) == "ESC status=0 ESC HA Active Healthy",
        30,
        f"{standby.name} forced active: {pair.status(standby)}\n{pair.logs()}",
    )
    present = pair.tenants()
    assert not set(alone) <= present  # given up, as the operator chose
    assert both <= present, f"lost: {sorted(both - present)[:10]}"  # what both nodes had

    # The old active returns and rejoins as the standby of the forced one.
    pair.power_on_and_start(active)
    pair.wait_pair(active=standby)


SLOW_DEPLOY = """
tenant: inflight
deployment:
  name: web
  vm_groups:
    - name: g
      image: 'slow-boot:3'
      flavor: m1.tiny
      bootup_time: 60
      scaling: {min_active: 2, max_active: 2}
"""


def _transaction(pair: Pair, tx_id: str) -> dict:
    with pair.client() as client:
        response = client.get(f"/v0/transactions/{tx_id}")
        response.raise_for_status()
        return response.json()


def test_a_deploy_in_flight_is_finished_by_the_new_active_and_its_vms_live_on(
    pair: Pair,
) -> None:
    old = pair.active()
    new = pair.other(old)
    with pair.client() as client:
        accepted = client.post(
            "/v0/deployments", content=SLOW_DEPLOY, headers={"content-type": "application/yaml"}
        )
    assert accepted.status_code == 202, accepted.text
    tx_id = accepted.json()["transaction_id"]
    _wait_state(pair, tx_id, ("IN_PROGRESS",), 30)
    time.sleep(1.0)  # its VMs are booting on the VIM host
    pair.lab.host_down(old.ns)

    ended = _wait_state(pair, tx_id, ("SUCCESS", "FAILED"), 120)
    assert ended["state"] == "SUCCESS", ended
    assert ended["resumes"] >= 1
    _undeploy(pair, ("web",))
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_a_switchover_with_deploys_in_flight_finishes_them_on_the_new_active(
    pair: Pair,
) -> None:
    old = pair.active()
    new = pair.other(old)
    names = ("sw1", "sw2")
    with pair.client() as client:
        accepted = [
            client.post(
                "/v0/deployments",
                content=SLOW_DEPLOY.replace("name: web", f"name: {name}"),
                headers={"content-type": "application/yaml"},
            )
            for name in names
        ]
    assert [a.status_code for a in accepted] == [202, 202], [a.text for a in accepted]
    tx_ids = [a.json()["transaction_id"] for a in accepted]
    for tx_id in tx_ids:
        _wait_state(pair, tx_id, ("IN_PROGRESS",), 30)
    result = _under_load(pair, lambda: pair.ok(old, "switchover"), "switchover-in-flight")
    assert result["new_primary"] == new.name
    for tx_id in tx_ids:
        ended = _wait_state(pair, tx_id, ("SUCCESS", "FAILED"), 120)
        assert ended["state"] == "SUCCESS", ended
    _undeploy(pair, names)
    pair.wait_pair(active=new)


def _undeploy(pair: Pair, names: tuple[str, ...]) -> None:
    with pair.client() as client:
        for name in names:
            shown = client.get(f"/v0/tenants/inflight/deployments/{name}").json()
            vms = [vm for group in shown["vm_groups"] for vm in group["vms"]]
            assert len(vms) == 2 and all(vm["state"] == "ALIVE" for vm in vms), shown
            undeploy = client.delete(f"/v0/tenants/inflight/deployments/{name}")
            assert undeploy.status_code == 202, undeploy.text
            gone = _wait_state(pair, undeploy.json()["transaction_id"], ("SUCCESS", "FAILED"), 60)
            assert gone["state"] == "SUCCESS", gone
    vm_processes = [p for p in pair.lab.pids(pair.vim_ns) if p != pair.vim_host.pid]
    assert vm_processes == [], "undeploy left VM processes on the VIM host"


def _wait_state(pair: Pair, tx_id: str, states: tuple[str, ...], timeout: float) -> dict:
    """The transaction once it is in one of `states`."""
    return wait_for(
        lambda: (t := _transaction(pair, tx_id))["state"] in states and t,
        timeout,
        f"transaction {tx_id} {'/'.join(states)}\n{pair.logs()}",
    )
