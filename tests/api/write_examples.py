"""One example request for every write route of the served app, and what they act on:
the tests that walk every write route (MAINTENANCE refuses them, a retry with the
same Idempotency-Key replays them) share them, so a write route added later without
an example fails both."""

from __future__ import annotations

from dataclasses import dataclass, field

from conftest import wait_transaction
from fastapi.testclient import TestClient

from esc.vim.base import VmSpec

try:  # FastAPI nests included routers in app.routes since 0.16x
    from fastapi.routing import iter_route_contexts
except ImportError:  # older: app.routes is flat

    def iter_route_contexts(routes):  # type: ignore[no-redef]
        return routes


WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
OP_MODE_ROUTE = ("PUT", "/esc/op_mode")
# Actions on the node asked, not writes of the controller's data: taken in MAINTENANCE
# too, and with no Idempotency-Key (a retry could act a second time; esc/api/routes/
# ha.py says why). The pair's role changes (an upgrade switches over in MAINTENANCE,
# a restore's swap is typically part of it; tests/ha tries them on a pair), the
# node API's package agent, which writes no row of the controller's database
# (tests/api/test_node_api.py tries it in MAINTENANCE), and its backups: taking,
# uploading and deleting an archive write none either, and a restore replaces the
# data as a whole, key rows included (tests/api/test_node_backups.py tries them in
# MAINTENANCE).
NODE_ACTIONS = {
    ("POST", "/esc/ha/switchover"),
    ("POST", "/esc/ha/force-active"),
    ("POST", "/esc/ha/restore"),
    ("PUT", "/esc/node/packages/{file}"),
    ("DELETE", "/esc/node/packages/{file}"),
    ("POST", "/esc/node/package/install"),
    ("POST", "/esc/node/backups"),
    ("PUT", "/esc/node/backups/{file}"),
    ("DELETE", "/esc/node/backups/{file}"),
    ("POST", "/esc/node/restore"),
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

    def send(self, api: TestClient, headers: dict[str, str] | None = None):
        return api.request(
            self.method,
            self.url,
            json=self.json,
            content=self.content,
            headers={**self.headers, **(headers or {})},
        )


# The op_mode, the one write taken in MAINTENANCE (leaving it).
OP_MODE_CALL = Call("PUT", "/esc/op_mode", json={"mode": "OPERATION"})


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
