"""Logins: an unknown user costs as much as a wrong password, and a client that
keeps failing is refused with 429 before any password is checked."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Node
from fastapi.testclient import TestClient

from esc import security
from esc.api.app import create_app
from esc.engine.controller import Controller

TRIES = 9


@pytest.fixture
def client_of(controller: Controller, node: Node) -> Iterator[Callable[..., TestClient]]:
    """TestClients of one app built with the node's settings as the test left them,
    each as a client at its own address."""
    opened: list[TestClient] = []
    app = None

    def make(address: str = "192.0.2.1") -> TestClient:
        nonlocal app
        if app is None:
            app = create_app(controller, manage_lifecycle=False)
        client = TestClient(app, client=(address, 40000), raise_server_exceptions=False)
        opened.append(client.__enter__())
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def elapsed(client: TestClient, auth: tuple[str, str]) -> float:
    started = time.perf_counter()
    response = client.get("/v0/tenants", auth=auth)
    took = time.perf_counter() - started
    assert response.status_code == 401, response.text
    return took


def test_an_unknown_user_takes_as_long_as_a_wrong_password(
    client_of: Callable[..., TestClient], node: Node
) -> None:
    node.settings.api.max_auth_failures = 1000
    client = client_of()
    known, unknown = [], []
    for i in range(TRIES):  # interleaved, so a burst of load hits both alike
        known.append(elapsed(client, ("admin", f"wrong-{i}")))
        unknown.append(elapsed(client, (f"nobody-{i}", f"wrong-{i}")))
    known_median, unknown_median = statistics.median(known), statistics.median(unknown)
    # Without the dummy check an unknown user skipped scrypt: about 0.35 of the time.
    assert unknown_median >= 0.5 * known_median, (
        f"unknown user {unknown_median * 1000:.1f} ms, wrong password {known_median * 1000:.1f} ms"
    )


def test_a_spent_failure_budget_gets_429_before_any_hash(
    client_of: Callable[..., TestClient], node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.settings.api.max_auth_failures = 3
    node.settings.api.auth_failure_window = 1.5
    checked: list[str] = []
    real_verify = security.verify_password

    def counting_verify(password: str, stored: str) -> bool:
        checked.append(password)
        return real_verify(password, stored)

    monkeypatch.setattr(security, "verify_password", counting_verify)
    guesser = client_of("192.0.2.66")
    for i in range(3):
        assert guesser.get("/v0/tenants", auth=("admin", f"guess-{i}")).status_code == 401
    assert len(checked) == 3

    refused = guesser.get("/v0/tenants", auth=node.auth)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    assert "3 failed logins" in refused.json()["detail"]
    assert len(checked) == 3, "a password was checked for a client past its budget"

    other = client_of("192.0.2.7")
    assert other.get("/v0/tenants", auth=node.auth).status_code == 200

    time.sleep(retry_after)
    assert guesser.get("/v0/tenants", auth=node.auth).status_code == 200


def test_missing_credentials_do_not_spend_the_budget(
    client_of: Callable[..., TestClient], node: Node
) -> None:
    node.settings.api.max_auth_failures = 1
    client = client_of()
    for _ in range(3):
        assert client.get("/v0/tenants").status_code == 401
    assert client.get("/v0/tenants", auth=node.auth).status_code == 200


def test_the_budget_forgets_the_stalest_clients_first() -> None:
    budget = security.FailureBudget(max_failures=1, window=60)
    budget.MAX_CLIENTS = 20
    for i in range(25):
        budget.failed(f"10.0.0.{i}")
    assert budget.retry_after("10.0.0.24") is not None
    assert budget.retry_after("10.0.0.0") is None
    assert len(budget._failures) <= budget.MAX_CLIENTS
