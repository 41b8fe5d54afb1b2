"""Deployments through the REST API on a real controller, local VIM, both backends."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import Node, live_vm_processes, wait_transaction
from fastapi.testclient import TestClient

EXAMPLE = (Path(__file__).parents[2] / "examples" / "deployment.yaml").read_text()

SMALL = """
tenant: t1
deployment:
  name: {name}
  vm_groups:
    - name: g
      image: {image}
      flavor: m1.tiny
      scaling: {{min_active: {count}, max_active: 4}}
      bootup_time: {bootup}
"""


def small(name: str = "d1", image: str = "healthy", count: int = 1, bootup: float = 10) -> str:
    return SMALL.format(name=name, image=image, count=count, bootup=bootup)


def deploy(api: TestClient, text: str) -> dict:
    response = api.post(
        "/v0/deployments", content=text, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_deploy_brings_vms_up_and_undeploy_removes_them(api: TestClient, node: Node) -> None:
    accepted = deploy(api, EXAMPLE)
    assert api.get(accepted["href"]).json()["operation"] == "DEPLOY"
    assert wait_transaction(api, accepted["transaction_id"])["state"] == "SUCCESS"

    shown = api.get("/v0/tenants/demo/deployments/web").json()
    assert shown["status"] == "ACTIVE"
    vms = [vm for group in shown["vm_groups"] for vm in group["vms"]]
    assert len(vms) == 3
    for vm in vms:
        assert vm["state"] == "ALIVE"
        health = httpx.get(f"{vm['address']}/health", timeout=2)
        assert health.status_code == 200 and health.json()["vm_id"] == vm["id"]
    assert len(live_vm_processes(node.home)) == 3

    events = [e["type"] for e in api.get("/v0/events", params={"deployment": "web"}).json()]
    assert events.count("VM_DEPLOYED") == 3 and events.count("VM_ALIVE") == 3
    assert events[-1] == "SERVICE_ALIVE"

    gone = api.delete("/v0/tenants/demo/deployments/web")
    assert gone.status_code == 202
    assert wait_transaction(api, gone.json()["transaction_id"])["state"] == "SUCCESS"
    assert api.get("/v0/tenants/demo/deployments/web").status_code == 404
    assert live_vm_processes(node.home) == []
    events = [e["type"] for e in api.get("/v0/events", params={"deployment": "web"}).json()]
    assert events.count("VM_UNDEPLOYED") == 3 and events[-1] == "SERVICE_UNDEPLOYED"


def test_second_write_in_flight_gets_409_naming_the_first(api: TestClient) -> None:
    first = deploy(api, small(count=2))
    second = api.delete("/v0/tenants/t1/deployments/d1")
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    assert first["transaction_id"] in second.json()["detail"]
    wait_transaction(api, first["transaction_id"])


def test_duplicate_deployment_name_is_409(api: TestClient) -> None:
    wait_transaction(api, deploy(api, small())["transaction_id"])
    again = api.post(
        "/v0/deployments", content=small(), headers={"content-type": "application/yaml"}
    )
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


def test_vm_that_never_answers_fails_the_deploy_with_a_reason(api: TestClient) -> None:
    accepted = deploy(api, small(image="unhealthy-after:0", bootup=1))
    tx = wait_transaction(api, accepted["transaction_id"])
    assert tx["state"] == "FAILED"
    assert "did not answer its health check within bootup_time 1 s" in tx["error"]
    assert api.get("/v0/tenants/t1/deployments/d1").json()["status"] == "ERROR"
    # A failed deployment is still managed: undeploy cleans it up.
    gone = api.delete("/v0/tenants/t1/deployments/d1").json()
    assert wait_transaction(api, gone["transaction_id"])["state"] == "SUCCESS"


def test_scale_out_and_in_within_bounds(api: TestClient, node: Node) -> None:
    wait_transaction(api, deploy(api, small())["transaction_id"])
    url = "/v0/tenants/t1/deployments/d1/vm_groups/g/scale"
    out = api.post(url, json={"count": 3})
    assert out.status_code == 202
    assert wait_transaction(api, out.json()["transaction_id"])["state"] == "SUCCESS"
    assert len(live_vm_processes(node.home)) == 3
    assert api.post(url, json={"count": 5}).status_code == 422  # above max_active 4
    back = api.post(url, json={"count": 1}).json()
    assert wait_transaction(api, back["transaction_id"])["state"] == "SUCCESS"
    assert len(live_vm_processes(node.home)) == 1


def test_update_adds_and_removes_vm_groups(api: TestClient, node: Node) -> None:
    wait_transaction(api, deploy(api, small())["transaction_id"])
    new = small().replace("    - name: g\n", "    - name: h\n")
    response = api.put(
        "/v0/tenants/t1/deployments/d1", content=new, headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 202, response.text
    assert wait_transaction(api, response.json()["transaction_id"])["state"] == "SUCCESS"
    groups = api.get("/v0/tenants/t1/deployments/d1").json()["vm_groups"]
    assert [g["name"] for g in groups] == ["h"]
    assert len(live_vm_processes(node.home)) == 1


def test_update_cannot_change_image_of_a_group(api: TestClient) -> None:
    wait_transaction(api, deploy(api, small())["transaction_id"])
    response = api.put(
        "/v0/tenants/t1/deployments/d1",
        content=small(image="crash-after:5"),
        headers={"content-type": "application/yaml"},
    )
    assert response.status_code == 422
    assert "undeploy and redeploy" in response.json()["detail"]


@pytest.mark.parametrize("action", ["STOP", "START", "REBOOT", "RECOVER"])
def test_vm_actions(api: TestClient, action: str) -> None:
    wait_transaction(api, deploy(api, small())["transaction_id"])
    vm = api.get("/v0/tenants/t1/deployments/d1").json()["vm_groups"][0]["vms"][0]
    if action == "START":
        stop = api.post(f"/v0/vms/{vm['id']}/actions", json={"action": "STOP"}).json()
        wait_transaction(api, stop["transaction_id"])
    response = api.post(f"/v0/vms/{vm['id']}/actions", json={"action": action})
    assert response.status_code == 202, response.text
    assert wait_transaction(api, response.json()["transaction_id"])["state"] == "SUCCESS"
    after = api.get("/v0/tenants/t1/deployments/d1").json()["vm_groups"][0]["vms"][0]
    assert after["state"] == ("STOPPED" if action == "STOP" else "ALIVE")
    if action != "STOP":
        assert httpx.get(f"{after['address']}/health", timeout=2).status_code == 200
