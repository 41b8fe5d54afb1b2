"""Where subscriptions may send events: link-local and cloud metadata hosts refused
always, `[notifications] allowed_hosts` obeyed, and the check made again at each
delivery (DNS can change); on both backends.

Name resolution is a table in the test (no DNS traffic), and the only receiver is
on 127.0.0.1; a refused delivery must never reach the HTTP client.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from conftest import free_port, slow_boot_descriptor, wait_for, wait_transaction
from fastapi.testclient import TestClient
from sqlalchemy import select

from esc.db.models import Delivery, Subscription
from esc.engine import callbacks
from esc.engine.controller import Controller
from esc.engine.notifier import Notifier


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The names the test knows, and which ones were looked up."""
    table: dict[str, list[str]] = {}
    asked: list[str] = []

    def resolve(host: str, _port: int) -> list:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in table[host]]

    monkeypatch.setattr(callbacks, "resolve_host", resolve)
    return SimpleNamespace(table=table, asked=asked)


@pytest.fixture
def posted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every URL the notifier hands to its HTTP client."""
    urls: list[str] = []
    real = Notifier._post

    def recording(client, url: str, payload: dict):
        urls.append(url)
        return real(client, url, payload)

    monkeypatch.setattr(Notifier, "_post", staticmethod(recording))
    return urls


def subscribe(api: TestClient, url: str):
    return api.post("/v0/subscriptions", json={"callback_url": url})


def subscriptions(controller: Controller) -> list[str]:
    with controller.db.read() as session:
        return list(session.scalars(select(Subscription.callback_url)))


def refused(api: TestClient, url: str, *words: str) -> str:
    response = subscribe(api, url)
    assert response.status_code == 422, f"{url}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, f"{url}: {word!r} not in {detail!r}"
    return detail


def test_link_local_and_metadata_hosts_are_refused(
    api: TestClient, controller: Controller, dns: SimpleNamespace
) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.1.7:8080/events",
        "http://[fe80::1]:8080/events",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ):
        refused(api, url, "link-local or cloud metadata", "allowed_hosts")
    refused(api, "http://metadata.google.internal/computeMetadata/v1/", "metadata service")
    refused(api, "http://METADATA.google.internal./", "metadata service")
    assert dns.asked == [], "a metadata name was looked up"

    dns.table["sneaky.test"] = ["10.0.0.5", "169.254.169.254"]  # refused if any address is
    refused(api, "http://sneaky.test/events", "169.254.169.254")
    refused(api, "http://nowhere.test/events", "does not resolve")
    assert subscriptions(controller) == []


def test_allowed_hosts_takes_listed_names_and_networks_only(
    api: TestClient, controller: Controller, dns: SimpleNamespace
) -> None:
    dns.table |= {"receiver.test": ["10.9.9.9"], "inside.test": ["127.0.0.2"]}
    dns.table["outside.test"] = ["10.1.2.3"]
    controller.settings.notifications.allowed_hosts = ["receiver.test", "127.0.0.0/8"]

    for url in (
        "http://receiver.test:9000/events",
        "http://127.0.0.1:9/events",
        "http://inside.test/events",
    ):
        assert subscribe(api, url).status_code == 201, url
    refused(api, "http://outside.test/events", "10.1.2.3", "allowed_hosts")
    refused(api, "http://10.1.2.3/events", "allowed_hosts")
    assert sorted(subscriptions(controller)) == [
        "http://127.0.0.1:9/events",
        "http://inside.test/events",
        "http://receiver.test:9000/events",
    ]

    # Listed or not, a metadata address stays refused.
    dns.table["receiver.test"] = ["169.254.169.254"]
    refused(api, "http://receiver.test/other", "refused always")

    # Names only: a name not listed is refused without being looked up.
    controller.settings.notifications.allowed_hosts = ["receiver.test"]
    dns.asked.clear()
    refused(api, "http://outside.test/events", "not in [notifications] allowed_hosts")
    assert dns.asked == []


class Receiver:
    """A callback endpoint on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_delivery_is_refused_when_the_name_now_resolves_to_a_refused_address(
    api: TestClient,
    controller: Controller,
    dns: SimpleNamespace,
    posted: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver()
    try:
        url = f"http://localhost:{receiver.port}/events"
        dns.table["localhost"] = ["127.0.0.1"]
        assert subscribe(api, url).status_code == 201

        dns.table["localhost"] = ["169.254.169.254"]  # the name's record changed since
        caplog.set_level(logging.WARNING, logger="esc.engine.notifier")
        accepted = api.post(
            "/v0/deployments",
            content=slow_boot_descriptor("notified", 0),
            headers={"content-type": "application/yaml"},
        ).json()
        assert wait_transaction(api, accepted["transaction_id"])["state"] == "SUCCESS"

        def refused_attempt() -> str | None:
            with controller.db.read() as session:
                return session.scalar(select(Delivery.last_error).where(Delivery.attempts > 0))

        error = wait_for(refused_attempt, 10, "a delivery attempt")
        assert "not sent" in error and "169.254.169.254" in error
        assert posted == [] and receiver.received == [], "a refused delivery was sent"
        logged = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
        assert logged and "169.254.169.254" in logged[0] and url in logged[0]

        # Back to a permitted address: the held deliveries go out, in order.
        dns.table["localhost"] = ["127.0.0.1"]
        wait_for(lambda: len(receiver.received) >= 2, 15, "deliveries after the fix")
        assert set(posted) == {url}
        ids = [e["event_id"] for e in receiver.received]
        assert ids == sorted(ids)
    finally:
        receiver.stop()
