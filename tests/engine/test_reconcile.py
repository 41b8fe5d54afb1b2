"""Start-up reconciliation: VMs re-adopted, orphans removed, no transaction stuck."""

from __future__ import annotations

import time

import pytest
from conftest import Node, live_vm_processes, wait_transaction
from fastapi.testclient import TestClient
from sqlalchemy import select

from esc import descriptor as dm
from esc.api.app import create_app
from esc.db.models import Operation, Transaction, TransactionState, VmGroup
from esc.descriptor import parse_descriptor
from esc.engine.controller import Controller
from esc.engine.orphans import delete_orphan, find_orphans
from esc.vim.base import InstanceState, VmSpec

TWO_VMS = """
tenant: r
deployment:
  name: keep
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny, scaling: {min_active: 2, max_active: 2}}
"""


def deploy_and_wait(controller: Controller, text: str) -> Transaction:
    tx = controller.northbound.deploy(parse_descriptor(text))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with controller.db.read() as session:
            current = session.get(Transaction, tx.id)
            if current.state.is_final:
                return current
        time.sleep(0.05)
    raise AssertionError("deploy did not end")


def test_vms_outlive_a_restart_and_are_managed_again(node: Node) -> None:
    first = Controller(node.home, node.settings)
    first.start()
    assert deploy_and_wait(first, TWO_VMS).state is TransactionState.SUCCESS
    pids = sorted(p.pid for p in live_vm_processes(node.home))
    first.stop()

    second = Controller(node.home, node.settings)
    second.start()
    try:
        assert sorted(p.pid for p in live_vm_processes(node.home)) == pids  # not restarted
        app = create_app(second, manage_lifecycle=False)
        with TestClient(app, headers={"Authorization": _basic(node)}) as client:
            shown = client.get("/v0/tenants/r/deployments/keep").json()
            assert [vm["state"] for vm in shown["vm_groups"][0]["vms"]] == ["ALIVE", "ALIVE"]
            gone = client.delete("/v0/tenants/r/deployments/keep").json()
            assert wait_transaction(client, gone["transaction_id"])["state"] == "SUCCESS"
        assert live_vm_processes(node.home) == []
    finally:
        second.stop()


def test_orphan_instances_are_quarantined_at_start_and_kept(node: Node) -> None:
    controller = Controller(node.home, node.settings)
    controller.vim.create_vm(VmSpec("not-in-the-db", "orphan", "healthy", "m1.tiny"))
    assert len(live_vm_processes(node.home)) == 1
    controller.start()
    try:
        # Stopped, never deleted: it may be what keeps a service up.
        assert live_vm_processes(node.home) == []
        assert controller.vim.list_instances() == ["not-in-the-db"]
        assert controller.vim.status("not-in-the-db").state is InstanceState.STOPPED
        orphans, unreachable = find_orphans(controller.db, controller.vims)
        assert [(o.vim, o.vm_id, o.state) for o in orphans] == [
            ("default", "not-in-the-db", InstanceState.STOPPED)
        ]
        assert unreachable == []
        delete_orphan(controller.db, controller.vims, "default", "not-in-the-db")
        assert controller.vim.list_instances() == []
    finally:
        controller.stop()


def test_transaction_resumed_too_often_is_closed_failed(node: Node) -> None:
    controller = Controller(node.home, node.settings)
    limit = node.settings.engine.max_resumes
    with controller.db.write() as session:
        session.add(
            Transaction(
                id="stuck-1",
                operation=Operation.UNDEPLOY,
                state=TransactionState.IN_PROGRESS,
                tenant="t",
                deployment_name="gone",
                lock_key="t/gone",
                request={},
                progress={},
                automatic=False,
                resumes=limit,
            )
        )
    controller.start()
    try:
        with controller.db.read() as session:
            tx = session.get(Transaction, "stuck-1")
            assert tx.state is TransactionState.FAILED
            assert f"abandoned after {limit} controller restarts" in tx.error
            assert tx.lock_key is None and tx.finished_at is not None
    finally:
        controller.stop()


def test_stop_mid_transaction_then_start_ends_it(node: Node) -> None:
    slow = TWO_VMS.replace("flavor: m1.tiny,", "flavor: m1.tiny, bootup_time: 30,").replace(
        "image: healthy", "image: unhealthy-after:0"
    )
    first = Controller(node.home, node.settings)
    first.start()
    tx = first.northbound.deploy(parse_descriptor(slow))
    time.sleep(1.0)  # VMs created, the engine waits for them to answer
    left = first.stop(timeout=5)
    assert left == [tx.id]
    with first.db.read() as session:
        assert session.get(Transaction, tx.id).state is TransactionState.IN_PROGRESS

    with first.db.write() as session:  # so the resumed wait ends in 1 s, not 30
        for group in session.scalars(select(VmGroup)):
            group.bootup_time = 1
    second = Controller(node.home, node.settings)
    second.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with second.db.read() as session:
                ended = session.get(Transaction, tx.id)
                if ended.state.is_final:
                    break
            time.sleep(0.1)
        assert ended.state is TransactionState.FAILED
        assert "did not answer its health check" in ended.error
        assert ended.resumes == 1
        assert live_vm_processes(node.home) == []  # the failed deploy was rolled back
    finally:
        second.stop()


def test_newer_data_model_feature_refused_for_old_deployment(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    accepted = api.post(
        "/v0/deployments", content=TWO_VMS, headers={"content-type": "application/yaml"}
    ).json()
    wait_transaction(api, accepted["transaction_id"])
    # A feature of the next data model, used by any descriptor with day0_config.
    feature = dm.Feature(
        "day0 templates",
        dm.DATA_MODEL_VERSION + 1,
        lambda d: any(g.day0_config for g in d.deployment.vm_groups),
    )
    monkeypatch.setattr(dm, "FEATURES", [feature])
    updated = TWO_VMS.replace("max_active: 2}", "max_active: 2}, day0_config: {a: b}")
    response = api.put(
        "/v0/tenants/r/deployments/keep",
        content=updated,
        headers={"content-type": "application/yaml"},
    )
    assert response.status_code == 422
    assert f"created with data model version {dm.DATA_MODEL_VERSION};" in response.json()["detail"]
    assert "undeploy and redeploy to use it" in response.json()["detail"]
    plain = api.put(
        "/v0/tenants/r/deployments/keep",
        content=TWO_VMS,
        headers={"content-type": "application/yaml"},
    )
    assert plain.status_code == 202


def _basic(node: Node) -> str:
    import base64

    return "Basic " + base64.b64encode(f"admin:{node.admin_password}".encode()).decode()
