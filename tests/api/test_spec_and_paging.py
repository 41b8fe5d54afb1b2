"""The served spec declares every error; 405 names the allowed methods; unknown
query parameters are refused; transactions and events page past 1000."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ControllerProcess, Node, escadm_ok
from fastapi.testclient import TestClient

from esc.db.models import Event, Operation, Transaction, TransactionState
from esc.engine.controller import Controller

ERRORS = {"400", "404", "409", "413", "422", "431", "503"}
WITH_CREDENTIALS = {"401", "429"}
METHODS = {"get", "put", "post", "delete", "patch"}


def test_every_operation_declares_its_errors_as_problems(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]
    assert len(operations) >= 15
    for path, method, op in operations:
        expected = ERRORS | (WITH_CREDENTIALS if op.get("security") else set())
        missing = expected - set(op["responses"])
        assert not missing, f"{method.upper()} {path} does not declare {sorted(missing)}"
        for status in expected - {"503"} if path == "/esc/health" else expected:
            content = op["responses"][status]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (path, method, status)
    secured = spec["paths"]["/v0/tenants"]["get"]["responses"]
    assert "Retry-After" in secured["429"]["headers"]
    assert "WWW-Authenticate" in secured["401"]["headers"]
    assert "401" not in spec["paths"]["/esc/health"]["get"]["responses"]
    # A created tenant is addressed by its name, not its id.
    created = spec["paths"]["/v0/tenants"]["post"]["responses"]["201"]["links"]["DeleteTenant"]
    assert created["parameters"] == {"tenant": "$response.body#/name"}
    assert set(spec["components"]["schemas"]["Problem"]["required"]) == {
        "type",
        "title",
        "status",
        "detail",
    }


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", "/v0/deployments", "GET, POST"),
        ("PATCH", "/v0/tenants/t/deployments/d", "DELETE, GET, PUT"),
        ("POST", "/esc/health", "GET"),
        ("DELETE", "/v0/transactions", "GET"),
    ],
)
def test_405_names_every_allowed_method(
    api: TestClient, method: str, path: str, allowed: str
) -> None:
    response = api.request(method, path)
    assert response.status_code == 405, response.text
    assert response.headers["Allow"] == allowed
    assert response.headers["content-type"] == "application/problem+json"
    assert allowed in response.json()["detail"]


@pytest.mark.parametrize(
    ("url", "unknown", "accepts"),
    [
        ("/v0/deployments?tenat=acme", "tenat", "name, tenant"),
        ("/v0/tenants?x=1&y=2", "x, y", "none"),
        ("/v0/events?afterr=5", "afterr", "after, cursor, deployment, limit, severity"),
    ],
)
def test_unknown_query_parameters_are_400_naming_them(
    api: TestClient, url: str, unknown: str, accepts: str
) -> None:
    response = api.get(url)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert f"unknown query parameter(s) {unknown};" in detail
    assert accepts in detail


def add_transactions(controller: Controller, count: int, *, in_progress: bool = False) -> None:
    # Three share each timestamp, so the order needs its tie-breaker.
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with controller.db.write() as session:
        for i in range(count):
            session.add(
                Transaction(
                    operation=Operation.DEPLOY,
                    state=TransactionState.SUCCESS,
                    tenant="t",
                    deployment_name=f"d{i}",
                    request={},
                    lock_key=f"test-lock-{i}" if in_progress else None,
                    created_at=start + timedelta(seconds=i // 3),
                )
            )


def add_events(controller: Controller, count: int) -> None:
    with controller.db.write() as session:
        for i in range(count):
            session.add(
                Event(
                    type="VM_ALIVE",
                    status="SUCCESS",
                    message=f"event {i}",
                    tenant="t",
                    deployment_name="d" if i % 2 else "other",
                    deployment_id=None,
                    transaction_id=None,
                )
            )


def all_pages(api: TestClient, url: str, bound: int = 20) -> tuple[list[dict], int]:
    items, pages = [], 0
    while url and pages < bound:
        response = api.get(url)
        assert response.status_code == 200, response.text
        items += response.json()
        pages += 1
        url = response.links.get("next", {}).get("url")
    assert not url, "more pages than the bound"
    return items, pages


def test_transactions_page_past_1000(api: TestClient, controller: Controller) -> None:
    add_transactions(controller, 2300)
    items, pages = all_pages(api, "/v0/transactions?limit=1000")
    assert pages == 3
    assert len(items) == len({t["id"] for t in items}) == 2300
    keys = [(t["created_at"], t["id"]) for t in items]
    assert keys == sorted(keys, reverse=True), "not newest first"
    assert "Link" not in api.get("/v0/transactions?limit=1000&deployment=d5").headers
    # Filters stay on the next pages.
    filtered, _ = all_pages(api, "/v0/transactions?limit=500&tenant=t&state=SUCCESS")
    assert len(filtered) == 2300
    assert len(api.get("/v0/transactions").json()) == 100, "the default page changed"


def test_events_page_past_1000(api: TestClient, controller: Controller) -> None:
    add_events(controller, 2100)
    items, pages = all_pages(api, "/v0/events?limit=1000&deployment=d")
    assert pages == 2
    ids = [e["event_id"] for e in items]
    assert len(ids) == 1050 and ids == sorted(set(ids))
    # `after` still works, and combines with the cursor.
    after = ids[500]
    rest, _ = all_pages(api, f"/v0/events?limit=100&deployment=d&after={after}")
    assert [e["event_id"] for e in rest] == ids[501:]


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/v0/transactions", "zzz"),
        ("/v0/transactions", "1_" + "a" * 37),
        ("/v0/transactions", "12345678901234567_ab"),
        ("/v0/events", "-1"),
        ("/v0/events", "abc"),
    ],
)
def test_a_cursor_of_another_form_is_refused(api: TestClient, path: str, cursor: str) -> None:
    response = api.get(path, params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert "cursor" in response.json()["detail"]


def test_a_repeated_query_parameter_is_400(api: TestClient) -> None:
    response = api.get("/v0/events?transaction_id=a&transaction_id=b")
    assert response.status_code == 400, response.text
    assert "transaction_id given more than once" in response.json()["detail"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ip_trans_lists_every_in_progress_transaction(
    node: Node, controller_process: ControllerProcess
) -> None:
    # Rows as another node's crash would leave them held, written before start-up.
    controller = Controller(node.home, node.settings)
    add_transactions(controller, 1201, in_progress=True)
    controller.db.engine.dispose()
    controller_process.start()
    listed = json.loads(escadm_ok("ip_trans", "--json", home=node.home.root))
    assert len({t["id"] for t in listed}) == 1201
