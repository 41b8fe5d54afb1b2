"""GET/PUT /esc/monitoring on both backends: the mode kept in the database across a
controller restart, bad bodies and missing credentials refused; and deployments whose
KPIs or rules name what the dynamic mappings lack, refused before anything starts."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import MonaThread, Node, monitored_descriptor, wait_for
from fastapi.testclient import TestClient

from esc.api.app import create_app
from esc.engine.controller import Controller
from esc.monitor import mode


def problem(response, status: int | tuple[int, ...], *words: str) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    return detail


@contextmanager
def restarted(controller: Controller, node: Node) -> Iterator[TestClient]:
    """Stop `controller`, start a new one on the same node, and talk to it."""
    controller.stop(timeout=10)
    again = Controller(node.home, node.settings)
    again.start()
    token = base64.b64encode(f"admin:{node.admin_password}".encode()).decode()
    try:
        app = create_app(again, manage_lifecycle=False)
        with TestClient(
            app, headers={"Authorization": f"Basic {token}"}, raise_server_exceptions=False
        ) as client:
            yield client
    finally:
        again.stop(timeout=10)


# GET / PUT /esc/monitoring -------------------------------------------------------


def test_defaults_without_a_mona_service(api: TestClient) -> None:
    view = api.get("/esc/monitoring")
    assert view.status_code == 200
    assert view.json() == {
        "mode": "RUNNING",
        "op_mode": "OPERATION",
        "service": {"running": False, "pid": None, "pgid": None},
        "status": None,
    }


def test_stop_and_start_are_kept_across_a_controller_restart(
    api: TestClient, controller: Controller, node: Node
) -> None:
    stopped = api.put("/esc/monitoring", json={"mode": "STOPPED"})
    assert stopped.status_code == 200 and stopped.json()["mode"] == "STOPPED"
    assert api.get("/esc/monitoring").json()["mode"] == "STOPPED"
    again = api.put("/esc/monitoring", json={"mode": "STOPPED"})  # idempotent
    assert again.status_code == 200 and again.json()["mode"] == "STOPPED"

    with restarted(controller, node) as client:
        assert client.get("/esc/monitoring").json()["mode"] == "STOPPED"
        with client.app.state.controller.db.read() as session:
            assert mode.current(session) is mode.MonitorMode.STOPPED
        assert client.put("/esc/monitoring", json={"mode": "RUNNING"}).json()["mode"] == "RUNNING"
        controller = client.app.state.controller

    with restarted(controller, node) as client:
        assert client.get("/esc/monitoring").json()["mode"] == "RUNNING"


def test_maintenance_shows_in_the_view(api: TestClient) -> None:
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    view = api.get("/esc/monitoring").json()
    assert (view["mode"], view["op_mode"]) == ("RUNNING", "MAINTENANCE")
    assert api.put("/esc/op_mode", json={"mode": "OPERATION"}).status_code == 200


def test_the_view_reports_a_running_mona(api: TestClient, mona: MonaThread) -> None:
    view = wait_for(
        lambda: (v := api.get("/esc/monitoring").json())["status"] and v, 5, "MONA's status"
    )
    assert view["service"] == {"running": True, "pid": os.getpid(), "pgid": os.getpgid(0)}
    assert view["status"]["paused"] is None and view["status"]["watched_vms"] == 0
    api.put("/esc/monitoring", json={"mode": "STOPPED"})
    wait_for(
        lambda: (
            api.get("/esc/monitoring").json()["status"]["paused"]
            == "monitoring is stopped (escadm monitor start)"
        ),
        5,
        "MONA pauses",
    )
    api.put("/esc/monitoring", json={"mode": "RUNNING"})
    wait_for(
        lambda: api.get("/esc/monitoring").json()["status"]["paused"] is None, 5, "MONA resumes"
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"mode": "PAUSED"}, ["mode"]),
        ({"mode": "stopped"}, ["mode"]),
        ({"mode": ""}, ["mode"]),
        ({"mode": None}, ["mode"]),
        ({"mode": 1}, ["mode"]),
        ({}, ["mode"]),
        ({"mode": "STOPPED", "force": True}, ["force"]),
        ([], []),
        ("STOPPED", []),
    ],
)
def test_bad_mode_body_is_refused(api: TestClient, body: object, words: list[str]) -> None:
    problem(api.put("/esc/monitoring", json=body), 422, *words)
    assert api.get("/esc/monitoring").json()["mode"] == "RUNNING"


@pytest.mark.parametrize("raw", [b"", b"{", b"mode=STOPPED", b"\xff\xfe", b"null"])
def test_malformed_mode_body_is_refused(api: TestClient, raw: bytes) -> None:
    response = api.put("/esc/monitoring", content=raw, headers={"content-type": "application/json"})
    problem(response, (400, 422))
    assert api.get("/esc/monitoring").json()["mode"] == "RUNNING"


def test_monitoring_needs_authentication(api: TestClient, node: Node) -> None:
    bare = TestClient(api.app, raise_server_exceptions=False)
    for response in (
        bare.get("/esc/monitoring"),
        bare.put("/esc/monitoring", json={"mode": "STOPPED"}),
        bare.put("/esc/monitoring", json={"mode": "STOPPED"}, auth=("admin", "wrong")),
        bare.put("/esc/monitoring", json={"mode": "STOPPED"}, auth=("root", node.admin_password)),
    ):
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Basic")
    assert api.get("/esc/monitoring").json()["mode"] == "RUNNING"


# deploy refusals -----------------------------------------------------------------


def descriptor(
    name: str = "mon", metric: str = "ICMPPing", actions: list[str] | None = None
) -> str:
    if actions is None:
        return monitored_descriptor(name, metric=metric, poll=1)
    return monitored_descriptor(name, actions, metric=metric, poll=1)


def post(api: TestClient, text: str):
    return api.post("/v0/deployments", content=text, headers={"content-type": "application/yaml"})


def nothing_deployed(api: TestClient) -> None:
    assert api.get("/v0/deployments").json() == []
    assert api.get("/v0/transactions").json() == []


def test_a_descriptor_the_mappings_support_is_accepted(api: TestClient) -> None:
    actions = ["FALSE recover autohealing", "TRUE servicebooted.sh", "ALWAYS log"]
    assert post(api, descriptor(actions=actions)).status_code == 202


@pytest.mark.parametrize(
    "action",
    ["FALSE reboot-it", "TRUE servicebooted", "FALSE  recover autohealing", "ALWAYS Log"],
)
def test_rule_action_not_in_the_mappings_is_refused(api: TestClient, action: str) -> None:
    detail = problem(
        post(api, descriptor(actions=["FALSE recover autohealing", action])),
        422,
        repr(action),
        "vm_group g",
        "rule VM_ALIVE",
        "dynamic_mapping",
    )
    assert "'FALSE recover autohealing'" not in detail  # only what is missing is named
    nothing_deployed(api)


@pytest.mark.parametrize("metric", ["SNMPGet", "icmpping", "icmp_ping", "VNF LOAD"])
def test_kpi_metric_not_in_the_mappings_is_refused(api: TestClient, metric: str) -> None:
    problem(
        post(api, descriptor(metric=metric)),
        422,
        repr(metric),
        "KPI VM_ALIVE",
        "dynamic_mapping",
    )
    nothing_deployed(api)


def test_every_missing_reference_is_named_at_once(api: TestClient) -> None:
    problem(
        post(api, descriptor(metric="SNMPGet", actions=["TRUE a", "FALSE b"])),
        422,
        "'SNMPGet'",
        "'TRUE a'",
        "'FALSE b'",
    )
    nothing_deployed(api)


@pytest.mark.parametrize(
    "action",
    ["recover autohealing", "true recover", "SOMETIMES recover", "   ", "\t", " \n "],
)
def test_rule_action_that_does_not_say_when_is_refused(api: TestClient, action: str) -> None:
    problem(
        post(api, descriptor(actions=[action])),
        (400, 422),
        "rules[0]",
        repr(action),
        "TRUE, FALSE or ALWAYS",
    )
    nothing_deployed(api)


@pytest.mark.parametrize("actions", [[], [""], ["x" * 257]])
def test_rule_actions_out_of_bounds_are_refused(api: TestClient, actions: list[str]) -> None:
    problem(post(api, descriptor(actions=actions)), (400, 422), "rules[0]")
    nothing_deployed(api)


def test_an_update_naming_an_unknown_action_is_refused(api: TestClient) -> None:
    accepted = post(api, descriptor())
    assert accepted.status_code == 202
    tx_id = accepted.json()["transaction_id"]
    wait_for(
        lambda: api.get(f"/v0/transactions/{tx_id}").json()["state"] == "SUCCESS", 30, "deployed"
    )
    update = api.put(
        "/v0/tenants/mon/deployments/mon",
        content=descriptor(actions=["FALSE reboot-it"]),
        headers={"content-type": "application/yaml"},
    )
    problem(update, 422, "'FALSE reboot-it'", "dynamic_mapping")
    assert len(api.get("/v0/transactions").json()) == 1
    shown = api.get("/v0/tenants/mon/deployments/mon").json()
    rules = shown["descriptor"]["deployment"]["vm_groups"][0]["rules"]
    assert rules[0]["actions"] == ["FALSE recover autohealing"]
