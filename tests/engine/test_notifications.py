"""Callback subscribers get every event, in order per deployment, at least once,
even when they are down for a while across a controller restart."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ControllerProcess, Node, free_port, wait_transaction


class Subscriber:
    """A callback endpoint on loopback that records what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def deployment(name: str) -> str:
    return f"""
tenant: notify
deployment:
  name: {name}
  vm_groups:
    - {{name: g, image: healthy, flavor: m1.tiny, scaling: {{min_active: 2, max_active: 2}}}}
"""


@pytest.mark.slow
def test_down_subscriber_gets_every_event_in_order_after_restart(
    node: Node, controller_process: ControllerProcess
) -> None:
    subscriber = Subscriber(free_port())  # not listening yet: the subscriber is down
    controller_process.start()
    with controller_process.client() as client:
        created = client.post("/v0/subscriptions", json={"callback_url": subscriber.url})
        assert created.status_code == 201, created.text
        for name in ("alpha", "beta"):
            accepted = client.post(
                "/v0/deployments",
                content=deployment(name),
                headers={"content-type": "application/yaml"},
            ).json()
            assert wait_transaction(client, accepted["transaction_id"])["state"] == "SUCCESS"
        undeploy = client.delete("/v0/tenants/notify/deployments/alpha").json()
        wait_transaction(client, undeploy["transaction_id"])
        time.sleep(1.5)  # the notifier tries and fails meanwhile
    controller_process.kill()

    controller_process.start()
    subscriber.start()
    try:
        with controller_process.client() as client:
            expected = client.get("/v0/events", params={"limit": 1000}).json()
        assert len(expected) >= 10
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {e["event_id"] for e in subscriber.received} >= {e["event_id"] for e in expected}:
                break
            time.sleep(0.1)
    finally:
        subscriber.stop()

    got_ids = [e["event_id"] for e in subscriber.received]
    assert set(got_ids) >= {e["event_id"] for e in expected}, "events lost"
    for name in ("alpha", "beta"):
        per_deployment = [e["event_id"] for e in subscriber.received if e["deployment"] == name]
        first_seen = list(dict.fromkeys(per_deployment))  # at-least-once: drop repeats
        assert first_seen == sorted(first_seen), f"{name}: events out of order"
    assert subscriber.received[0]["type"] == "VM_DEPLOYED"
