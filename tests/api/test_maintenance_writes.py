"""Every write route of the served app is refused in MAINTENANCE (503, a problem body,
nothing changed), except setting the op_mode itself; on both backends.

The routes are enumerated from the app, so a write route added later without
the service layer's check, or without an example request here, fails this test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conftest import Node, all_rows, wait_transaction
from fastapi.testclient import TestClient

from esc.vim.base import VmSpec

try:  # FastAPI nests included routers in app.routes since 0.16x
    from fastapi.routing import iter_route_contexts
except ImportError:  # older: app.routes is flat

    def iter_route_contexts(routes):  # type: ignore[no-redef]
        return routes


WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OP_MODE_ROUTE = ("PUT", "/esc/op_mode")
# The pair's role changes are taken in MAINTENANCE too (an upgrade switches over in
# it), and so is a restore's swap (a restore is typically part of maintenance);
# tests/ha tries them on a pair.
ROLE_ROUTES = {
    ("POST", "/esc/ha/switchover"),
    ("POST", "/esc/ha/force-active"),
    ("POST", "/esc/ha/restore"),
}
# The node API's package agent writes no row of the controller's database: uploading a
# package and installing it on a node in MAINTENANCE is the normal case of an upgrade
# (tests/api/test_node_api.py tries them in it).
NODE_ROUTES = {
    ("PUT", "/esc/node/packages/{file}"),
    ("DELETE", "/esc/node/packages/{file}"),
    ("POST", "/esc/node/package/install"),
}
YAML = {"content-type": "application/yaml"}
SCRIPT = {"content": "#!/bin/sh\necho hi\n", "timeout": 5}


def descriptor(name: str, tenant: str = "maint", max_active: int = 1) -> str:
    return f"""
tenant: {tenant}
deployment:
  name: {name}
  vm_groups:
    - name: g
      image: healthy
      flavor: m1.tiny
      scaling: {{min_active: 1, max_active: {max_active}}}
"""


@dataclass
class Call:
    method: str
    url: str
    json: object = None
    content: str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, api: TestClient):
        return api.request(
            self.method, self.url, json=self.json, content=self.content, headers=self.headers
        )


def write_routes(api: TestClient) -> set[tuple[str, str]]:
    """(method, path) of every write route the app serves, included routers flattened."""
    return {
        (method, route.path)
        for route in iter_route_contexts(api.app.routes)
        for method in (route.methods or set()) & WRITE_METHODS
    }


def populate(api: TestClient) -> dict[str, str]:
    """What the example writes act on: an empty tenant, deployments, a script, a
    subscription. Returns the ids the calls need."""
    assert api.post("/v0/tenants", json={"name": "empty"}).status_code == 201
    for name, max_active in (("upd", 1), ("scl", 2), ("und", 1), ("act", 1)):
        accepted = api.post(
            "/v0/deployments", content=descriptor(name, max_active=max_active), headers=YAML
        )
        assert accepted.status_code == 202, accepted.text
        assert wait_transaction(api, accepted.json()["transaction_id"])["state"] == "SUCCESS"
    vm = api.get("/v0/tenants/maint/deployments/act").json()["vm_groups"][0]["vms"][0]
    assert api.put("/v0/scripts/old.sh", json=SCRIPT).status_code == 200
    sub = api.post("/v0/subscriptions", json={"callback_url": "http://127.0.0.1:9/events"})
    assert sub.status_code == 201
    assert api.post("/v0/vims", json={"name": "old", "driver": "fake"}).status_code == 201
    # An orphan on the node's own VIM: an instance with no VM record.
    api.app.state.controller.vim.create_vm(VmSpec("left-behind", "left", "healthy", "m1.tiny"))
    return {"vm": vm["id"], "subscription": sub.json()["id"]}


def example_calls(api: TestClient, ids: dict[str, str]) -> dict[tuple[str, str], Call]:
    """One request per write route, each one that succeeds in OPERATION."""
    mappings = api.get("/v0/dynamic_mappings").content
    deployment = "/v0/tenants/{tenant}/deployments/{name}"
    return {
        ("POST", "/v0/tenants"): Call("POST", "/v0/tenants", json={"name": "fresh"}),
        ("DELETE", "/v0/tenants/{tenant}"): Call("DELETE", "/v0/tenants/empty"),
        ("POST", "/v0/deployments"): Call(
            "POST", "/v0/deployments", content=descriptor("new"), headers=YAML
        ),
        ("PUT", deployment): Call(
            "PUT", "/v0/tenants/maint/deployments/upd", content=descriptor("upd"), headers=YAML
        ),
        ("POST", deployment + "/vm_groups/{vm_group}/scale"): Call(
            "POST", "/v0/tenants/maint/deployments/scl/vm_groups/g/scale", json={"count": 2}
        ),
        ("DELETE", deployment): Call("DELETE", "/v0/tenants/maint/deployments/und"),
        ("POST", "/v0/vms/{vm_id}/actions"): Call(
            "POST", f"/v0/vms/{ids['vm']}/actions", json={"action": "REBOOT"}
        ),
        ("POST", "/v0/subscriptions"): Call(
            "POST", "/v0/subscriptions", json={"callback_url": "http://127.0.0.1:9/new"}
        ),
        ("DELETE", "/v0/subscriptions/{sub_id}"): Call(
            "DELETE", f"/v0/subscriptions/{ids['subscription']}"
        ),
        ("PUT", "/v0/dynamic_mappings"): Call(
            "PUT",
            "/v0/dynamic_mappings",
            content=mappings,
            headers={"content-type": "application/xml"},
        ),
        ("PUT", "/esc/monitoring"): Call("PUT", "/esc/monitoring", json={"mode": "STOPPED"}),
        ("PUT", "/v0/scripts/{name}"): Call("PUT", "/v0/scripts/new.sh", json=SCRIPT),
        ("DELETE", "/v0/scripts/{name}"): Call("DELETE", "/v0/scripts/old.sh"),
        ("POST", "/v0/vims"): Call("POST", "/v0/vims", json={"name": "new", "driver": "fake"}),
        ("DELETE", "/v0/vims/{name}"): Call("DELETE", "/v0/vims/old"),
        ("DELETE", "/v0/vims/{name}/orphans/{vm_id}"): Call(
            "DELETE", "/v0/vims/default/orphans/left-behind"
        ),
    }


def client_rows(url: str) -> dict:
    """Every table's rows but the executors' heartbeats, which change by themselves."""
    return {t: rows for t, rows in all_rows(url).items() if t != "owners"}


def test_every_write_but_the_op_mode_is_refused_in_maintenance(api: TestClient, node: Node) -> None:
    ids = populate(api)
    calls = example_calls(api, ids)
    routes = write_routes(api)
    assert len(routes) >= 14, "the app lost write routes"
    missing = routes - set(calls) - {OP_MODE_ROUTE} - ROLE_ROUTES - NODE_ROUTES
    assert not missing, f"add an example request for each new write route: {sorted(missing)}"
    assert OP_MODE_ROUTE in routes and routes >= NODE_ROUTES

    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    before = client_rows(node.settings.database.url)
    for route, call in calls.items():
        response = call.send(api)
        assert response.status_code == 503, f"{route}: {response.status_code} {response.text}"
        assert response.headers["content-type"] == "application/problem+json", route
        assert "MAINTENANCE" in response.json()["detail"], route
    assert client_rows(node.settings.database.url) == before, "a refused write changed rows"

    # The way out is open, and each refused request was one the node takes otherwise.
    back = api.put("/esc/op_mode", json={"mode": "OPERATION"})
    assert back.status_code == 200 and back.json() == {"mode": "OPERATION"}
    for route, call in calls.items():
        response = call.send(api)
        assert response.status_code < 300, f"{route}: {response.status_code} {response.text}"
