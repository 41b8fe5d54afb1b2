"""Idempotency-Key on northbound writes: a retry gets the first answer, never a second
write; the key with another request is refused; a refused write records nothing."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import Node, all_rows, wait_transaction
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from write_examples import (
    NODE_ACTIONS,
    OP_MODE_CALL,
    OP_MODE_ROUTE,
    WRITE_METHODS,
    example_calls,
    populate,
    write_routes,
)

from esc.cli.client import sends_key
from esc.db.models import IdempotencyKey, Tenant, Transaction
from esc.engine import idempotency
from esc.engine.controller import Controller
from esc.engine.idempotency import HEADER, REPLAYED_HEADER

EXAMPLE = """
tenant: t1
deployment:
  name: d1
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny, scaling: {min_active: 1, max_active: 1}}
"""


def _count(controller: Controller, model: type) -> int:
    with controller.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_a_retried_tenant_create_gets_the_first_answer_and_makes_one_tenant(
    api: TestClient, controller: Controller
) -> None:
    headers = {"Idempotency-Key": "c1d6b0a4-create-t1"}
    first = api.post("/v0/tenants", json={"name": "t1"}, headers=headers)
    assert first.status_code == 201, first.text
    again = api.post("/v0/tenants", json={"name": "t1"}, headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _count(controller, Tenant) == 1
    # Without a key, the same request is a new write, refused as a duplicate.
    assert api.post("/v0/tenants", json={"name": "t1"}).status_code == 409


def test_a_retried_deploy_is_one_transaction(api: TestClient, controller: Controller) -> None:
    headers = {"Idempotency-Key": "deploy-d1", "Content-Type": "application/yaml"}
    first = api.post("/v0/deployments", content=EXAMPLE, headers=headers)
    assert first.status_code == 202, first.text
    again = api.post("/v0/deployments", content=EXAMPLE, headers=headers)
    assert again.status_code == 202
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    assert again.headers["Location"] == first.headers["Location"]
    with controller.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Transaction)) == 1


def test_the_key_of_another_request_is_refused_naming_it(api: TestClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    assert api.post("/v0/tenants", json={"name": "t1"}, headers=headers).status_code == 201
    other = api.post("/v0/tenants", json={"name": "t2"}, headers=headers)
    assert other.status_code == 422
    assert "'k-1' was used for another request (POST /v0/tenants" in other.json()["detail"]
    assert [t["name"] for t in api.get("/v0/tenants").json()] == ["t1"]


def test_a_refused_write_records_nothing_and_a_bad_key_is_a_400(
    api: TestClient, controller: Controller
) -> None:
    assert api.post("/v0/tenants", json={"name": "t1"}).status_code == 201
    headers = {"Idempotency-Key": "dup"}
    assert api.post("/v0/tenants", json={"name": "t1"}, headers=headers).status_code == 409
    assert _count(controller, IdempotencyKey) == 0
    bad = api.post("/v0/tenants", json={"name": "t3"}, headers={"Idempotency-Key": "a b"})
    assert bad.status_code == 400 and "printable ASCII" in bad.json()["detail"]
    assert [t["name"] for t in api.get("/v0/tenants").json()] == ["t1"]


def test_the_key_is_kept_with_its_user_and_its_answer(
    api: TestClient, controller: Controller
) -> None:
    headers = {"Idempotency-Key": "shared"}
    assert api.post("/v0/tenants", json={"name": "t1"}, headers=headers).status_code == 201
    with controller.db.read() as session:
        (row,) = session.scalars(select(IdempotencyKey))
        assert (row.user, row.key, row.status) == ("admin", "shared", 201)


# Tables that change by themselves: the executors' heartbeats, and the deliveries the
# notifier retries to the examples' callbacks (nothing listens there).
SELF_CHANGING = {"owners", "deliveries"}


def _rows(node: Node) -> dict:
    return {t: r for t, r in all_rows(node.settings.database.url).items() if t not in SELF_CHANGING}


def test_every_write_route_replays_its_first_answer_and_writes_once(
    api: TestClient, node: Node
) -> None:
    ids = populate(api)
    calls = {**example_calls(api, ids), OP_MODE_ROUTE: OP_MODE_CALL}
    missing = write_routes(api) - set(calls) - NODE_ACTIONS
    assert not missing, f"add an example request for each new write route: {sorted(missing)}"

    firsts = {}
    for n, (route, call) in enumerate(calls.items()):
        key = f"walk-{n}"
        first = call.send(api, headers={HEADER: key})
        assert first.status_code < 300, f"{route}: {first.status_code} {first.text}"
        assert REPLAYED_HEADER not in first.headers, route
        if first.status_code == 202:  # nothing runs on by itself once the rows are compared
            assert wait_transaction(api, first.json()["transaction_id"])["state"] == "SUCCESS"
        firsts[route] = (key, first)

    before = _rows(node)
    assert len(before["idempotency_keys"]) == len(calls)
    for route, call in calls.items():
        key, first = firsts[route]
        again = call.send(api, headers={HEADER: key})
        assert again.status_code == first.status_code, f"{route}: {again.text}"
        assert again.headers.get(REPLAYED_HEADER) == "true", f"{route} was done again"
        assert again.headers.get("location") == first.headers.get("location"), route
        assert (again.json() if again.content else None) == (
            first.json() if first.content else None
        ), route
    assert _rows(node) == before, "a replayed write changed rows"


def test_a_replay_is_answered_in_maintenance_and_a_new_key_is_refused(api: TestClient) -> None:
    headers = {HEADER: "before-maintenance"}
    first = api.post("/v0/tenants", json={"name": "t1"}, headers=headers)
    assert first.status_code == 201
    assert api.put("/esc/op_mode", json={"mode": "MAINTENANCE"}).status_code == 200
    again = api.post("/v0/tenants", json={"name": "t1"}, headers=headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers[REPLAYED_HEADER] == "true"
    fresh = api.post("/v0/tenants", json={"name": "t2"}, headers={HEADER: "in-maintenance"})
    assert fresh.status_code == 503 and "MAINTENANCE" in fresh.json()["detail"]
    assert [t["name"] for t in api.get("/v0/tenants").json()] == ["t1"]


def test_a_retry_racing_its_first_attempt_gets_the_first_answer(
    api: TestClient, controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both attempts look for the key before either commits (PostgreSQL lets them; a
    SQLite write waits for the other's commit): one tenant, one answer twice."""
    looked = threading.Barrier(2, timeout=3)
    look = idempotency.replay_if_done
    first_look = threading.local()

    def look_then_wait(session, request) -> None:
        look(session, request)
        if not getattr(first_look, "done", False):
            first_look.done = True
            with contextlib.suppress(threading.BrokenBarrierError):
                looked.wait()

    monkeypatch.setattr(idempotency, "replay_if_done", look_then_wait)
    headers = {HEADER: "raced"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda _: api.post("/v0/tenants", json={"name": "t1"}, headers=headers), range(2)
            )
        )
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert sorted(a.headers.get(REPLAYED_HEADER, "") for a in answers) == ["", "true"]
    assert _count(controller, Tenant) == 1 and _count(controller, IdempotencyKey) == 1


def test_the_openapi_declares_the_key_on_every_write_but_the_node_actions(
    api: TestClient,
) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    writes = {
        (method.upper(), path): operation
        for path, operations in paths.items()
        for method, operation in operations.items()
        if method.upper() in WRITE_METHODS
    }
    assert set(writes) == write_routes(api)
    for route, operation in writes.items():
        keys = [p for p in operation.get("parameters", []) if p["name"] == HEADER]
        successes = [r for s, r in operation["responses"].items() if s.startswith("2")]
        # escadm sends a key, and retries, exactly where the API keeps one.
        assert sends_key(*route) is bool(keys), route
        if route in NODE_ACTIONS:
            assert not keys, f"{route} is a node action: it takes no key"
            continue
        assert len(keys) == 1, f"{route} does not take {HEADER}"
        (key,) = keys
        assert key["in"] == "header" and key["required"] is False
        assert "idempotency_ttl" in key["description"] and "422" in key["description"]
        assert successes and all(REPLAYED_HEADER in r["headers"] for r in successes), route
