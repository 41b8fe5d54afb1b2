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
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from esc_pair import Pair, wait_for
from lab import Lab, availability
from needs import keepalived_missing, need
from pg_server import availability as pg_availability
from writes import WriteLoad, figures

NET = "198.18.60"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "fo"


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(600),
]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    need(availability())
    need(pg_availability())
    need(keepalived_missing())
    base = Path(tempfile.mkdtemp(prefix="fo-"))
    base.chmod(0o711)  # postgres goes through it to the homes
    with Lab(3, net=f"{NET}.0/24", prefix=PREFIX) as lab:
        made = Pair(lab, base)
        try:
            made.start_agent()
            made.start_vim_host()
            made.create()
            yield made
        finally:
            made.stop()
    if not os.environ.get("FO_KEEP"):
        shutil.rmtree(base, ignore_errors=True)


def _under_load(pair: Pair, fault, label: str) -> dict:
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix=label)
    load.start()
    try:
        load.wait_acks(30, 30)
        time.sleep(random.uniform(0, 1.0))
        fault_at = time.time()
        fault()
        wait_for(
            lambda: any(a.acked > fault_at and a.node != load.acks[0].node for a in load.acks),
            30,
            f"a write acknowledged by the other node after {label}\n{pair.logs()}",
        )
        time.sleep(1.0)
    finally:
        load.stop()
    result = figures(load, fault_at, pair.tenants())
    print(f"\n{label}: {json.dumps(result.as_json())}")
    assert result.lost == [], f"acknowledged writes lost: {result.lost[:10]}"
    assert result.overlap == [], "the old active acknowledged writes after the new one did"
    return result.as_json()


def test_the_active_host_dies_and_the_standby_takes_over_without_losing_a_write(
    pair: Pair,
) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.lab.host_down(old.ns), "host-down")
    assert result["old_primary"] == old.name and result["new_primary"] == new.name
    assert result["failover_s"] < 5, result
    assert pair.status(new) == "ESC status=0 ESC HA Active Healthy"

    # The old active comes back (it was fenced): it rejoins as the standby by itself.
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)


def test_a_planned_switchover_loses_no_write(pair: Pair) -> None:
    old = pair.active()
    new = pair.other(old)
    result = _under_load(pair, lambda: pair.ok(old, "switchover"), "switchover")
    assert result["new_primary"] == new.name
    pair.wait_pair(active=new)


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
    wait_for(lambda: _transaction(pair, tx_id)["state"] == "IN_PROGRESS", 30, "the deploy runs")
    time.sleep(1.0)  # its VMs are booting on the VIM host
    pair.lab.host_down(old.ns)

    ended = wait_for(
        lambda: (t := _transaction(pair, tx_id))["state"] in ("SUCCESS", "FAILED") and t,
        120,
        f"the deploy ends on {new.name}\n{pair.logs()}",
    )
    assert ended["state"] == "SUCCESS", ended
    assert ended["resumes"] >= 1
    with pair.client() as client:
        shown = client.get("/v0/tenants/inflight/deployments/web").json()
        vms = [vm for group in shown["vm_groups"] for vm in group["vms"]]
        assert len(vms) == 2 and all(vm["state"] == "ALIVE" for vm in vms), shown
        undeploy = client.delete("/v0/tenants/inflight/deployments/web")
        assert undeploy.status_code == 202, undeploy.text
    gone = undeploy.json()["transaction_id"]
    wait_for(lambda: _transaction(pair, gone)["state"] == "SUCCESS", 60, "the undeploy ends")
    vm_processes = [p for p in pair.lab.pids(pair.vim_ns) if p != pair.vim_host.pid]
    assert vm_processes == [], "undeploy left VM processes on the VIM host"
    pair.power_on_and_start(old)
    pair.wait_pair(active=new)
