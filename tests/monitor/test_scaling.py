"""Auto-scaling on the VNF-reported load: out and back in, never beyond min/max."""

from __future__ import annotations

import time

import httpx
from conftest import MonaThread, Node, events, wait_for, wait_transaction
from fastapi.testclient import TestClient

POLL = 0.3

ELASTIC = f"""
tenant: mon
deployment:
  name: elastic
  vm_groups:
    - name: web
      image: healthy
      flavor: m1.tiny
      bootup_time: 10
      scaling: {{min_active: 1, max_active: 3, elastic: true}}
      kpis:
        - event_name: VM_OVERLOADED
          metric_value: 80
          metric_cond: GT
          metric_occurrences_true: 2
          metric_collector: {{type: VNF_LOAD, poll_frequency: {POLL}}}
        - event_name: VM_UNDERLOADED
          metric_value: 20
          metric_cond: LT
          metric_occurrences_true: 2
          metric_collector: {{type: VNF_LOAD, poll_frequency: {POLL}}}
      rules:
        - event_name: VM_OVERLOADED
          actions: ["TRUE esc_vm_scale_out"]
        - event_name: VM_UNDERLOADED
          actions: ["TRUE esc_vm_scale_in"]
"""


def group(api: TestClient) -> dict:
    return api.get("/v0/tenants/mon/deployments/elastic").json()["vm_groups"][0]


def set_load(api: TestClient, load: float) -> None:
    """Every VM of the group reports `load` from now on."""
    for vm in group(api)["vms"]:
        answer = httpx.put(f"{vm['address']}/load", json={"load": load}, timeout=2)
        assert answer.status_code == 200, answer.text


def steady(api: TestClient, count: int) -> bool:
    """`count` VMs, all ALIVE, and no transaction in flight on the deployment."""
    txs = api.get("/v0/transactions", params={"in_progress": True}).json()
    vms = group(api)["vms"]
    return not txs and len(vms) == count and all(vm["state"] == "ALIVE" for vm in vms)


def scale_events(api: TestClient) -> list[str]:
    return [e["type"] for e in events(api, "VM_SCALE_OUT", "VM_SCALE_IN")]


def test_scales_out_and_in_on_load_within_min_and_max(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    accepted = api.post(
        "/v0/deployments", content=ELASTIC, headers={"content-type": "application/yaml"}
    ).json()
    assert wait_transaction(api, accepted["transaction_id"])["state"] == "SUCCESS"
    # Idle at min_active: VM_UNDERLOADED turns TRUE, but there is nothing to scale in.
    time.sleep(POLL * 6)
    assert steady(api, 1) and scale_events(api) == []

    for count in (2, 3):
        set_load(api, 95)
        wait_for(lambda c=count: steady(api, c), 20, f"scaled out to {count}")
    # At max_active a lasting overload scales no further.
    set_load(api, 95)
    time.sleep(POLL * 10)
    assert steady(api, 3) and group(api)["desired_count"] == 3

    for count in (2, 1):
        set_load(api, 0)
        wait_for(lambda c=count: steady(api, c), 20, f"scaled in to {count}")
    time.sleep(POLL * 10)
    assert steady(api, 1) and group(api)["desired_count"] == 1

    assert scale_events(api) == ["VM_SCALE_OUT", "VM_SCALE_OUT", "VM_SCALE_IN", "VM_SCALE_IN"]
    scalings = [
        t
        for t in api.get("/v0/transactions", params={"limit": 100}).json()
        if t["operation"] == "UPDATE"
    ]
    assert len(scalings) == 4 and all(t["automatic"] and t["state"] == "SUCCESS" for t in scalings)
    messages = [e["message"] for e in events(api, "VM_SCALE_OUT", "VM_SCALE_IN")]
    assert messages[0] == "vm_group web of elastic scaled out from 1 to 2 VMs"
    assert messages[-1] == "vm_group web of elastic scaled in from 2 to 1 VMs"
