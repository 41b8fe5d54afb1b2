"""Idempotency-Key on northbound writes: a retry gets the first answer, never a second
write; the key with another request is refused; a refused write records nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from esc.db.models import IdempotencyKey, Tenant, Transaction
from esc.engine.controller import Controller

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
