"""MONA with real VM processes: detection, auto-healing per recovery policy,
bounded attempts, maintenance, deployment updates, restarts of MONA itself."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
from conftest import (
    MonaThread,
    Node,
    events,
    live_vm_processes,
    monitored_descriptor,
    recoveries,
    wait_for,
    wait_transaction,
)
from fastapi.testclient import TestClient

from esc.engine.controller import Controller

POLL = 0.4
OCCURRENCES = 2


def descriptor(name: str, **options: object) -> str:
    return monitored_descriptor(name, poll=POLL, occurrences_false=OCCURRENCES, **options)


def deploy(api: TestClient, text: str) -> dict:
    response = api.post(
        "/v0/deployments", content=text, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    assert wait_transaction(api, response.json()["transaction_id"])["state"] == "SUCCESS"
    return only_vm(api, "mon", yaml_name(text))


def yaml_name(text: str) -> str:
    return text.split("name: ", 1)[1].split()[0]


def only_vm(api: TestClient, tenant: str, name: str) -> dict:
    shown = api.get(f"/v0/tenants/{tenant}/deployments/{name}").json()
    (vm,) = shown["vm_groups"][0]["vms"]
    return vm


def vm_pid(node: Node, vm_id: str) -> int:
    (proc,) = [p for p in live_vm_processes(node.home) if vm_id in " ".join(p.cmdline())]
    return proc.pid


def answers(address: str, vm_id: str) -> bool:
    try:
        body = httpx.get(f"{address}/health", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return False
    return body.get("vm_id") == vm_id and body.get("status") == "alive"


def settled(api: TestClient) -> list[dict]:
    """The recovery transactions, once none is in flight."""
    txs = recoveries(api)
    return txs if all(t["state"] in ("SUCCESS", "FAILED") for t in txs) else []


def test_killed_vm_is_detected_in_time_and_the_same_vm_answers_again(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    vm = deploy(api, descriptor("heal"))
    old_pid = vm_pid(node, vm["id"])
    time.sleep(3 * POLL)  # MONA watches it
    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)

    (init,) = wait_for(lambda: events(api, "VM_RECOVERY_INIT"), 10, "VM_RECOVERY_INIT")
    detected = _timestamp(init["time"]) - killed_at
    # poll_frequency x occurrences, plus the engine's pick-up of the transaction.
    assert detected <= POLL * OCCURRENCES + 0.5, f"detected after {detected:.2f} s"
    wait_for(lambda: events(api, "VM_RECOVERY_COMPLETE"), 15, "VM_RECOVERY_COMPLETE")

    (tx,) = recoveries(api)
    assert tx["automatic"] and tx["state"] == "SUCCESS"
    again = only_vm(api, "mon", "heal")
    assert again["id"] == vm["id"] and again["state"] == "ALIVE"
    assert vm_pid(node, vm["id"]) != old_pid
    assert answers(again["address"], vm["id"])
    assert init["vm_id"] == vm["id"] and init["transaction_id"] == tx["id"]


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_unhealthy_vm_is_rebooted_then_redeployed(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    # Its "disk" goes bad after 2 s: a reboot keeps the instance, a redeploy makes a new one.
    vm = deploy(api, descriptor("bad-disk", image="unhealthy-after:2", wait=1.5))
    pid = vm_pid(node, vm["id"])
    assert psutil.pid_exists(pid)
    (tx,) = wait_for(lambda: settled(api), 20, "one recovery, ended")
    assert tx["state"] == "SUCCESS", tx
    progress = _progress(node, tx["id"])
    assert progress.get("rebooted") and progress.get("redeployed"), progress
    assert only_vm(api, "mon", "bad-disk")["state"] == "ALIVE"


def test_reboot_only_never_redeploys_and_attempts_are_bounded(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    vm = deploy(
        api, descriptor("reboot-only", image="unhealthy-after:1", policy="REBOOT_ONLY", retries=2)
    )
    wait_for(lambda: events(api, "VM_MANUAL_RECOVERY_NEEDED"), 30, "manual recovery needed")
    time.sleep(POLL * OCCURRENCES * 3)  # time enough for a third attempt, which must not come
    txs = settled(api)
    assert len(txs) == 2 and all(t["state"] == "FAILED" and t["automatic"] for t in txs), txs
    for tx in txs:
        progress = _progress(node, tx["id"])
        assert progress.get("rebooted") and not progress.get("redeployed"), progress
    assert len(events(api, "VM_RECOVERY_FAILED")) == 2
    (needed,) = events(api, "VM_MANUAL_RECOVERY_NEEDED")
    assert needed["vm_id"] == vm["id"] and "2 automatic recovery attempts" in needed["message"]
    assert only_vm(api, "mon", "reboot-only")["state"] == "ERROR"


def test_redeploy_only_makes_a_new_instance_without_rebooting(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    vm = deploy(api, descriptor("redeploy-only", image="unhealthy-after:2", policy="REDEPLOY_ONLY"))
    (tx,) = wait_for(lambda: settled(api), 20, "one recovery, ended")
    assert tx["state"] == "SUCCESS", tx
    progress = _progress(node, tx["id"])
    assert progress.get("redeployed") and not progress.get("rebooted"), progress
    again = only_vm(api, "mon", "redeploy-only")
    assert again["id"] == vm["id"] and answers(again["address"], vm["id"])


def _progress(node: Node, tx_id: str) -> dict:
    from esc.db.models import Transaction
    from esc.db.session import Database

    db = Database(node.home.database_url(node.settings), pool_size=1, max_overflow=0)
    try:
        with db.read() as session:
            return dict(session.get(Transaction, tx_id).progress)
    finally:
        db.dispose()


def test_maintenance_pauses_recovery_until_operation(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    vm = deploy(api, descriptor("maint"))
    time.sleep(3 * POLL)
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    os.kill(vm_pid(node, vm["id"]), signal.SIGKILL)
    time.sleep(POLL * OCCURRENCES * 4)
    assert recoveries(api) == []
    assert api.get("/esc/monitoring").json()["status"]["paused"] == "ESC is in MAINTENANCE mode"

    assert api.put("/esc/op_mode", json={"mode": "OPERATION"}).status_code == 200
    wait_for(lambda: events(api, "VM_RECOVERY_COMPLETE"), 15, "recovered after maintenance")
    assert answers(only_vm(api, "mon", "maint")["address"], vm["id"])


def test_monitor_stop_pauses_and_start_resumes(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    vm = deploy(api, descriptor("stopped"))
    view = api.put("/esc/monitoring", json={"mode": "STOPPED"}).json()
    assert view["mode"] == "STOPPED"
    time.sleep(0.5)
    os.kill(vm_pid(node, vm["id"]), signal.SIGKILL)
    time.sleep(POLL * OCCURRENCES * 4)
    assert recoveries(api) == []
    assert api.put("/esc/monitoring", json={"mode": "RUNNING"}).json()["mode"] == "RUNNING"
    wait_for(lambda: events(api, "VM_RECOVERY_COMPLETE"), 15, "recovered after monitor start")


def test_monitors_are_off_while_the_deployment_is_updated(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    text = descriptor("updating")
    vm = deploy(api, text)
    time.sleep(3 * POLL)
    # An update adding a vm_group whose VM takes 3 s to boot keeps the deployment busy.
    slow = text + '    - {name: slow, image: "slow-boot:3", flavor: m1.tiny, bootup_time: 20}\n'
    update = api.put(
        "/v0/tenants/mon/deployments/updating",
        content=slow,
        headers={"content-type": "application/yaml"},
    )
    assert update.status_code == 202, update.text
    os.kill(vm_pid(node, vm["id"]), signal.SIGKILL)
    time.sleep(POLL * OCCURRENCES * 3)
    assert recoveries(api) == []  # not while the update runs
    status = api.get("/esc/monitoring").json()["status"]
    assert "mon/updating" in status["held_deployments"]
    assert wait_transaction(api, update.json()["transaction_id"])["state"] == "SUCCESS"
    wait_for(lambda: events(api, "VM_RECOVERY_COMPLETE"), 15, "recovered after the update")


def test_restarting_mona_mid_recovery_does_not_recover_twice(
    api: TestClient, node: Node, mona: MonaThread
) -> None:
    # A reboot makes the VM answer only after 2 s: MONA is restarted in between.
    vm = deploy(api, descriptor("once", image="slow-boot:2", wait=8))
    time.sleep(3 * POLL)
    os.kill(vm_pid(node, vm["id"]), signal.SIGKILL)
    wait_for(lambda: events(api, "VM_RECOVERY_INIT"), 10, "recovery started")
    mona.stop()
    mona.start()
    wait_for(lambda: events(api, "VM_RECOVERY_COMPLETE"), 20, "recovery complete")
    time.sleep(POLL * OCCURRENCES * 3)
    assert len(recoveries(api)) == 1
    assert len(events(api, "VM_RECOVERY_INIT")) == 1
    assert len([p for p in live_vm_processes(node.home) if vm["id"] in " ".join(p.cmdline())]) == 1


def test_a_vm_whose_instance_is_gone_is_redeployed(
    api: TestClient, node: Node, controller: Controller, mona: MonaThread
) -> None:
    """As after a restore of a backup older than the VM's instance: nothing to reboot."""
    vm = deploy(api, descriptor("gone"))
    controller.vim.delete_vm(vm["id"])
    (tx,) = wait_for(lambda: settled(api), 20, "one recovery, ended")
    assert tx["state"] == "SUCCESS", tx
    progress = _progress(node, tx["id"])
    assert progress.get("redeployed") and not progress.get("rebooted"), progress
    assert answers(only_vm(api, "mon", "gone")["address"], vm["id"])
