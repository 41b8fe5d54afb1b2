"""Notifications to https callbacks verify the receiver's certificate: against the
public CAs by default, or against the subscription's own CA bundle."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from sqlalchemy import select

from esc.db.models import Delivery, DeliveryState
from esc.engine.controller import Controller
from esc.engine.events import emit, outbox_changed
from esc.tls import generate_self_signed


class HttpsReceiver:
    """A callback endpoint on loopback serving a self-signed certificate."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = directory / "cert.pem", directory / "key.pem"
        generate_self_signed(self.cert, key, ["127.0.0.1"])
        self.received: list[tuple[str, dict]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[HttpsReceiver]:
    receiver = HttpsReceiver(tmp_path / "receiver")
    yield receiver
    receiver.close()


def subscribe(api: TestClient, url: str, ca_bundle: str | None = None) -> str:
    body = {"callback_url": url} | ({"ca_bundle": ca_bundle} if ca_bundle else {})
    created = api.post("/v0/subscriptions", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["ca_bundle"] == ca_bundle
    return created.json()["id"]


def deliveries(controller: Controller) -> dict[str, Delivery]:
    with controller.db.read() as session:
        return {d.subscription_id: d for d in session.scalars(select(Delivery))}


def test_https_callbacks_are_verified(
    api: TestClient, controller: Controller, receiver: HttpsReceiver, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    generate_self_signed(other / "cert.pem", other / "key.pem", ["127.0.0.1"])
    public_cas = subscribe(api, receiver.url("/public"))
    own_ca = subscribe(api, receiver.url("/own"), receiver.cert.read_text())
    wrong_ca = subscribe(api, receiver.url("/wrong"), (other / "cert.pem").read_text())
    with controller.db.write() as session:
        emit(session, "TLS_TEST", "hello over https", tenant="t", deployment_name="d")
    outbox_changed.set()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = deliveries(controller)
        if found[own_ca].state == DeliveryState.DELIVERED and all(
            found[sub].attempts for sub in (public_cas, wrong_ca)
        ):
            break
        time.sleep(0.1)
    found = deliveries(controller)
    assert found[own_ca].state == DeliveryState.DELIVERED
    assert [path for path, _ in receiver.received] == ["/own"]
    assert receiver.received[0][1]["message"] == "hello over https"
    for refused in (public_cas, wrong_ca):
        assert found[refused].state == DeliveryState.PENDING  # retried, never sent unverified
        assert "CERTIFICATE_VERIFY_FAILED" in found[refused].last_error


@pytest.mark.parametrize(
    ("bundle", "words"),
    [
        ("not a certificate", "no -----BEGIN CERTIFICATE-----"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid PEM"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "private key"),
    ],
)
def test_a_ca_bundle_that_is_not_certificates_is_refused(
    api: TestClient, bundle: str, words: str
) -> None:
    refused = api.post(
        "/v0/subscriptions", json={"callback_url": "https://127.0.0.1:9/e", "ca_bundle": bundle}
    )
    assert refused.status_code == 422, refused.text
    assert "ca_bundle" in refused.json()["detail"] and words in refused.json()["detail"]
    assert api.get("/v0/subscriptions").json() == []  # nothing stored
