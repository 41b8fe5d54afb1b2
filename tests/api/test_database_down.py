"""A database that stops answering under a request is a 503 the client can retry, not
an internal error: on a pair that is what a client sees during a failover."""

from __future__ import annotations

from conftest import database_down
from fastapi.testclient import TestClient

from esc.engine.controller import Controller


def test_a_database_that_does_not_answer_is_a_503_to_retry(
    api: TestClient, controller: Controller
) -> None:
    assert api.get("/v0/tenants").status_code == 200  # the login is known from here on
    with database_down(controller):
        response = api.post("/v0/tenants", json={"name": "while-down"})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    detail = response.json()["detail"]
    assert "the node's database does not answer (connection refused" in detail, detail
    assert "retry" in detail

    again = api.post("/v0/tenants", json={"name": "after"})
    assert again.status_code == 201, again.text
    assert {t["name"] for t in api.get("/v0/tenants").json()} >= {"after"}
    assert "while-down" not in {t["name"] for t in api.get("/v0/tenants").json()}
