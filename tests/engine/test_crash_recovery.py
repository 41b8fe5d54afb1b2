"""A controller killed with SIGKILL mid-deploy: the transaction still ends, and
every VM has exactly one process (no orphan, no duplicate)."""

from __future__ import annotations

import time

import pytest
from conftest import ControllerProcess, Node, live_vm_processes, wait_transaction

VMS = 8
DESCRIPTOR = f"""
tenant: crash
deployment:
  name: mid-deploy
  vm_groups:
    - name: g
      image: healthy
      flavor: m1.tiny
      scaling: {{min_active: {VMS}, max_active: {VMS}}}
      bootup_time: 20
"""


def _instance_of(proc) -> str:
    cmdline = proc.cmdline()
    return cmdline[cmdline.index("--instance-dir") + 1].rstrip("/").rsplit("/", 1)[-1]


@pytest.mark.slow
def test_sigkill_mid_deploy_then_restart(node: Node, controller_process: ControllerProcess) -> None:
    controller_process.start()
    with controller_process.client() as client:
        accepted = client.post(
            "/v0/deployments", content=DESCRIPTOR, headers={"content-type": "application/yaml"}
        ).json()
        tx_id = accepted["transaction_id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events = client.get("/v0/events", params={"transaction_id": tx_id}).json()
            if any(e["type"] == "VM_DEPLOYED" for e in events):
                break
            time.sleep(0.005)
        controller_process.kill()
    state_at_kill = [e["type"] for e in events]
    assert "SERVICE_ALIVE" not in state_at_kill, "the kill came too late to test anything"

    controller_process.start()
    with controller_process.client() as client:
        tx = wait_transaction(client, tx_id, timeout=60)
        assert tx["state"] in ("SUCCESS", "FAILED")
        if tx["state"] == "FAILED":
            assert tx["error"], "a FAILED transaction must say why"
        assert tx["resumes"] == 1
        deployment = client.get("/v0/tenants/crash/deployments/mid-deploy").json()
        vm_ids = {vm["id"] for g in deployment["vm_groups"] for vm in g["vms"]}
        events = client.get("/v0/events", params={"transaction_id": tx_id, "limit": 1000}).json()

    processes = live_vm_processes(node.home)
    instances = [_instance_of(p) for p in processes]
    assert len(instances) == len(set(instances)), f"duplicate VM processes: {instances}"
    assert set(instances) == vm_ids, "orphan or missing VM processes"
    if tx["state"] == "SUCCESS":
        assert len(vm_ids) == VMS
        assert all(vm["state"] == "ALIVE" for g in deployment["vm_groups"] for vm in g["vms"])
    # Each VM's events are not duplicated by the resumed steps.
    deployed = [e["vm_id"] for e in events if e["type"] == "VM_DEPLOYED"]
    assert len(deployed) == len(set(deployed))
