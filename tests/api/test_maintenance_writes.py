"""Every write route of the served app is refused in MAINTENANCE (503, a problem body,
nothing changed), except setting the op_mode itself; on both backends.

The routes are enumerated from the app, so a write route added later without
the service layer's check, or without an example request (write_examples), fails
this test.
"""

from __future__ import annotations

from conftest import Node, all_rows
from fastapi.testclient import TestClient
from write_examples import NODE_ACTIONS, OP_MODE_ROUTE, example_calls, populate, write_routes


def client_rows(url: str) -> dict:
    """Every table's rows but the executors' heartbeats, which change by themselves."""
    return {t: rows for t, rows in all_rows(url).items() if t != "owners"}


def test_every_write_but_the_op_mode_is_refused_in_maintenance(api: TestClient, node: Node) -> None:
    ids = populate(api)
    calls = example_calls(api, ids)
    routes = write_routes(api)
    assert len(routes) >= 14, "the app lost write routes"
    missing = routes - set(calls) - {OP_MODE_ROUTE} - NODE_ACTIONS
    assert not missing, f"add an example request for each new write route: {sorted(missing)}"
    assert OP_MODE_ROUTE in routes

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
