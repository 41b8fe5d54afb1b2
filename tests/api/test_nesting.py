"""Deeply nested JSON or YAML is refused with 400 naming the bound, before any
parser recurses into a RecursionError (a 500 with a long traceback in the log)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from esc.nesting import MAX_NESTING_DEPTH, json_depth

EXAMPLE = Path(__file__).parents[2] / "examples" / "deployment.yaml"

DEEP_JSON = '{"tenant": "t1", "deployment": ' + "[" * 1000 + "]" * 1000 + "}"
DEEP_YAML_FLOW = "tenant: t1\ndeployment: " + "[" * 500 + "]" * 500 + "\n"
DEEP_YAML_BLOCK = "tenant: t1\ndeployment:\n" + "".join(
    " " * level + f"k{level}:\n" for level in range(1, 300)
)

DEEP_BODIES = [
    pytest.param(DEEP_JSON, "application/json", id="json-1000"),
    pytest.param(DEEP_YAML_FLOW, "application/yaml", id="yaml-flow-500"),
    pytest.param(DEEP_YAML_BLOCK, "application/yaml", id="yaml-block-300"),
    pytest.param(DEEP_JSON, "", id="json-undeclared"),
]


def assert_names_the_limit(response, caplog: pytest.LogCaptureFixture) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert f"deeper than {MAX_NESTING_DEPTH} levels" in detail, detail
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "an exception was logged"


@pytest.mark.parametrize(("body", "content_type"), DEEP_BODIES)
def test_deep_descriptor_is_400_on_post_and_put(
    api: TestClient, caplog: pytest.LogCaptureFixture, body: str, content_type: str
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"content-type": content_type} if content_type else {}
    posted = api.post("/v0/deployments", content=body, headers=headers)
    assert_names_the_limit(posted, caplog)
    put = api.put("/v0/tenants/t1/deployments/d1", content=body, headers=headers)
    assert_names_the_limit(put, caplog)
    assert api.get("/v0/deployments").json() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v0/tenants"),
        ("POST", "/v0/subscriptions"),
        ("PUT", "/v0/scripts/s1"),
        ("PUT", "/esc/op_mode"),
        ("PUT", "/esc/monitoring"),
    ],
)
def test_every_json_body_is_bounded(
    api: TestClient, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    caplog.set_level(logging.DEBUG)
    body = '{"name": ' + "[" * 2000 + "]" * 2000 + "}"
    response = api.request(method, path, content=body, headers={"content-type": "application/json"})
    assert_names_the_limit(response, caplog)


def test_a_legitimately_nested_descriptor_still_deploys(api: TestClient) -> None:
    descriptor = yaml.safe_load(EXAMPLE.read_text())
    # The example's rules call a script; the nesting is what this test is about.
    for group in descriptor["deployment"]["vm_groups"]:
        group["scaling"].update(min_active=0)
    as_json = api.post("/v0/deployments", json=descriptor)
    assert as_json.status_code == 202, as_json.text
    descriptor["deployment"]["name"] = "web2"
    as_yaml = api.post(
        "/v0/deployments",
        content=yaml.safe_dump(descriptor),
        headers={"content-type": "application/yaml"},
    )
    assert as_yaml.status_code == 202, as_yaml.text


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('{"a": "[[[[{{{{"}', 1),
        ('{"a": "\\"[[[["}', 1),
        ("[[[", 3),
        ('"unterminated [[[[', 0),
        ("", 0),
    ],
)
def test_json_depth_ignores_brackets_in_strings(text: str, depth: int) -> None:
    assert json_depth(text.encode()) == depth
    if depth:
        assert json_depth(json.dumps({"x": text}).encode()) == 1
