"""op_mode over the API on both backends: writes refused in MAINTENANCE, reads served,
--ipt_check refusing while a transaction is in flight, the mode kept in the database."""

from __future__ import annotations

from conftest import Node, slow_boot_descriptor, wait_transaction
from fastapi.testclient import TestClient

from esc.engine.controller import Controller


def deploy(api: TestClient, name: str, boot: float = 0):
    return api.post(
        "/v0/deployments",
        content=slow_boot_descriptor(name, boot),
        headers={"content-type": "application/yaml"},
    )


def test_maintenance_refuses_writes_and_serves_reads(api: TestClient) -> None:
    assert api.get("/esc/op_mode").json() == {"mode": "OPERATION"}
    in_flight = deploy(api, "busy", boot=2).json()

    refused = api.put("/esc/op_mode", json={"mode": "MAINTENANCE", "ipt_check": True})
    assert refused.status_code == 409
    assert in_flight["transaction_id"] in refused.json()["detail"]

    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).json() == {"mode": "MAINTENANCE"}
    blocked = deploy(api, "new")
    assert blocked.status_code == 503
    assert blocked.headers["content-type"] == "application/problem+json"
    assert "temporarily unavailable" in blocked.json()["detail"]
    for write in (
        api.delete("/v0/tenants/ops/deployments/busy"),
        api.post("/v0/vms/any/actions", json={"action": "REBOOT"}),
    ):
        assert write.status_code == 503
    assert api.get("/v0/deployments").status_code == 200

    assert wait_transaction(api, in_flight["transaction_id"])["state"] == "SUCCESS"
    assert api.get("/v0/transactions", params={"in_progress": True}).json() == []
    accepted = api.put("/esc/op_mode", json={"mode": "MAINTENANCE", "ipt_check": True})
    assert accepted.status_code == 200  # nothing in flight any more

    assert api.put("/esc/op_mode", json={"mode": "OPERATION"}).status_code == 200
    assert deploy(api, "new").status_code == 202


def test_mode_is_kept_in_the_database(api: TestClient, controller: Controller, node: Node) -> None:
    api.put("/esc/op_mode", json={"mode": "MAINTENANCE"})
    controller.stop()
    again = Controller(node.home, node.settings)
    again.start()
    try:
        from esc.engine import op_mode

        with again.db.read() as session:
            assert op_mode.current(session) is op_mode.OpMode.MAINTENANCE
    finally:
        again.stop()


def test_bad_mode_is_422(api: TestClient) -> None:
    response = api.put("/esc/op_mode", json={"mode": "NAP"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_every_answer_names_the_node_that_gave_it(api: TestClient, node: Node) -> None:
    # Behind a pair's VIP this is how a client tells which node served it.
    for response in (api.get("/esc/health"), api.get("/esc/op_mode", auth=("nobody", "x"))):
        assert response.headers["ESC-Node"] == node.settings.node.name
