"""Bad input gets a 4xx problem+json that names the problem, never a 500."""

from __future__ import annotations

import pytest
from conftest import Node
from fastapi.testclient import TestClient

GOOD = """
tenant: t1
deployment:
  name: d1
  vm_groups:
    - {name: g, image: healthy, flavor: m1.tiny}
"""


def post(api: TestClient, body: str | bytes, content_type: str = "application/yaml"):
    return api.post("/v0/deployments", content=body, headers={"content-type": content_type})


def assert_problem(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"]
    for word in words:
        assert word in body["detail"], body["detail"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        ("tenant: [oops\n", "application/yaml", 400, ["malformed YAML", "line"]),
        ('{"tenant": "t1",', "application/json", 400, ["malformed JSON", "line 1"]),
        (
            GOOD.replace("healthy", "windows-95"),
            "application/yaml",
            422,
            ["vm_group g", "windows-95"],
        ),
        (GOOD.replace("m1.tiny", "m9.huge"), "application/yaml", 422, ["vm_group g", "m9.huge"]),
        (
            GOOD.replace(
                "flavor: m1.tiny", "flavor: m1.tiny, scaling: {min_active: 5, max_active: 2}"
            ),
            "application/yaml",
            422,
            ["min_active (5)"],
        ),
        (
            GOOD + "    - {name: g, image: healthy, flavor: m1.tiny}\n",
            "application/yaml",
            422,
            ["duplicate vm_group name 'g'"],
        ),
        ("42", "application/yaml", 422, ["must be a mapping"]),
        (GOOD.replace("name: d1", "name: ../etc"), "application/yaml", 422, ["deployment.name"]),
    ],
)
def test_bad_descriptor(
    api: TestClient, body: str, content_type: str, status: int, words: list[str]
) -> None:
    assert_problem(post(api, body, content_type), status, *words)
    assert api.get("/v0/deployments").json() == []


def test_oversized_body_is_413(api: TestClient, node: Node) -> None:
    limit = node.settings.api.max_body_bytes
    assert_problem(post(api, "#" * (limit + 1)), 413, "larger than")


def test_missing_credentials_is_401(api: TestClient) -> None:
    response = TestClient(api.app).get("/v0/deployments")
    assert_problem(response, 401, "basic authentication")
    assert response.headers["www-authenticate"].startswith("Basic")


def test_wrong_credentials_is_401(api: TestClient) -> None:
    assert_problem(api.get("/v0/deployments", auth=("admin", "wrong")), 401, "wrong")
    assert_problem(api.get("/v0/deployments", auth=("nobody", "x")), 401, "wrong")


def test_health_needs_no_credentials(api: TestClient) -> None:
    response = TestClient(api.app).get("/esc/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status_code"], body["message"], body["stage"]) == (
        2000,
        "ESC services are running",
        "READY",
    )
    assert {c["name"]: c["ok"] for c in body["checks"]} == {
        "database": True,
        "vim": True,
        "engine": True,
        "notifier": True,
    }


def test_version(api: TestClient) -> None:
    from esc import __version__

    body = api.get("/esc/version").json()
    assert body["full"] == __version__
    assert body["version"] == ".".join(__version__.split(".")[:3])


@pytest.mark.parametrize(
    ("method", "path", "json", "status"),
    [
        ("GET", "/v0/tenants/nope/deployments/nope", None, 404),
        ("DELETE", "/v0/tenants/nope/deployments/nope", None, 404),
        ("GET", "/v0/transactions/nope", None, 404),
        ("POST", "/v0/vms/nope/actions", {"action": "REBOOT"}, 404),
        ("POST", "/v0/vms/nope/actions", {"action": "EXPLODE"}, 422),
        ("POST", "/v0/subscriptions", {"callback_url": "not a url"}, 422),
        ("POST", "/v0/tenants", {"name": ""}, 422),
        ("GET", "/v0/events?after=-1", None, 422),
        ("GET", f"/v0/events?after={2**64}", None, 422),
        ("POST", "/v0/subscriptions", {"callback_url": "http://127.0.0.1/" + "a" * 2100}, 422),
        ("DELETE", "/v0/subscriptions/nope", None, 404),
        ("PATCH", "/v0/deployments", None, 405),
    ],
)
def test_other_bad_requests(
    api: TestClient, method: str, path: str, json: dict | None, status: int
) -> None:
    response = api.request(method, path, json=json)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_tenant_lifecycle(api: TestClient) -> None:
    assert api.post("/v0/tenants", json={"name": "acme"}).status_code == 201
    assert_problem(api.post("/v0/tenants", json={"name": "acme"}), 409, "already exists")
    assert [t["name"] for t in api.get("/v0/tenants").json()] == ["acme"]
    assert api.delete("/v0/tenants/acme").status_code == 204


@pytest.mark.parametrize(
    "url",
    [
        "/v0/events?transaction_id=%00",
        "/v0/events?deployment=a%00b",
        "/v0/tenants/t%00/deployments",
        "/v0/scripts/x%00y",
    ],
)
def test_a_nul_in_the_url_is_400_not_a_database_error(api: TestClient, url: str) -> None:
    """PostgreSQL refuses NUL in text; the API says so before any query runs."""
    answer = api.get(url)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "NUL" in answer.json()["detail"]
