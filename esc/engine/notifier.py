"""Delivers events to subscribers' callback URLs from the outbox.

At least once, in order per (subscription, deployment): only the oldest
pending delivery of each such pair is ever attempted, so a subscriber that
is down holds back that deployment's later events until it answers again,
with exponential backoff between attempts. The outbox is in the database,
so pending deliveries survive a controller restart.
"""

from __future__ import annotations

import logging
import ssl
import threading
from datetime import timedelta

import httpx
from sqlalchemy import func, select

from esc.config import NotificationSettings
from esc.db.models import Delivery, DeliveryState, Event, Subscription, utcnow
from esc.db.session import Database
from esc.engine import callbacks
from esc.engine.events import event_payload, outbox_changed
from esc.tls import trust_context

log = logging.getLogger(__name__)

BATCH = 200
IDLE_POLL_SECONDS = 1.0


class Notifier:
    def __init__(self, db: Database, settings: NotificationSettings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        outbox_changed.set()
        if self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        with Clients(self.settings.timeout) as clients:
            while not self._stop.is_set():
                try:
                    attempted = self.deliver_due(clients)
                except Exception:
                    log.exception("notifier: delivery round failed; retrying")
                    attempted = 0
                if not attempted:
                    outbox_changed.wait(IDLE_POLL_SECONDS)
                    outbox_changed.clear()

    def _due_heads(self) -> list[tuple[int, str, str | None, int]]:
        """(delivery id, callback URL, CA bundle, event id) of the oldest pending delivery
        per (subscription, deployment), when it is due."""
        heads = (
            select(func.min(Delivery.id).label("id"))
            .where(Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.subscription_id, Delivery.ordering_key)
            .subquery()
        )
        query = (
            select(
                Delivery.id, Subscription.callback_url, Subscription.ca_bundle, Delivery.event_id
            )
            .join(heads, heads.c.id == Delivery.id)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(Delivery.next_attempt_at <= utcnow())
            .order_by(Delivery.id)
            .limit(BATCH)
        )
        with self.db.read() as session:
            return [tuple(row) for row in session.execute(query)]

    def deliver_due(self, clients: Clients) -> int:
        heads = self._due_heads()
        for delivery_id, url, ca_bundle, event_id in heads:
            if self._stop.is_set():
                break
            try:  # again at each delivery: what the host name resolves to may have changed
                callbacks.check_callback(url, self.settings)
            except callbacks.CallbackRefused as exc:
                log.warning("delivery %s to %s not sent: %s", delivery_id, url, exc)
                self._record(delivery_id, f"not sent: {exc}")
                continue
            with self.db.read() as session:
                payload = event_payload(session.get(Event, event_id))
            try:
                client = clients.for_bundle(ca_bundle)
            except ssl.SSLError as exc:  # validated on the way in; say so if it still fails
                error: str | None = f"unusable ca_bundle: {exc}"
            else:
                error = self._post(client, url, payload)
            self._record(delivery_id, error)
        return len(heads)

    @staticmethod
    def _post(client: httpx.Client, url: str, payload: dict) -> str | None:
        try:
            response = client.post(url, json=payload)
        except httpx.HTTPError as exc:
            return f"{exc.__class__.__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    def _record(self, delivery_id: int, error: str | None) -> None:
        with self.db.write() as session:
            delivery = session.get(Delivery, delivery_id)
            if delivery is None:  # its subscription was deleted meanwhile
                return
            delivery.attempts += 1
            if error is None:
                delivery.state = DeliveryState.DELIVERED
                delivery.delivered_at = utcnow()
                delivery.last_error = None
                return
            delay = min(
                self.settings.max_backoff,
                self.settings.initial_backoff * 2 ** (delivery.attempts - 1),
            )
            delivery.next_attempt_at = utcnow() + timedelta(seconds=delay)
            delivery.last_error = error
            log.info(
                "delivery %s to subscription %s failed (%s); retry in %.1f s",
                delivery_id,
                delivery.subscription_id,
                error,
                delay,
            )


class Clients:
    """One HTTP client per trust: the system's CAs (httpx verifies by default), or a
    subscription's own CA bundle. Bounded, since each holds its own connections."""

    MAX_BUNDLES = 64

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._default = self._client(True)
        self._by_bundle: dict[str, httpx.Client] = {}

    def _client(self, verify: ssl.SSLContext | bool) -> httpx.Client:
        # No redirects: a callback must not send ESC's events on to another host.
        return httpx.Client(timeout=self.timeout, follow_redirects=False, verify=verify)

    def for_bundle(self, ca_bundle: str | None) -> httpx.Client:
        if not ca_bundle:
            return self._default
        client = self._by_bundle.get(ca_bundle)
        if client is None:
            if len(self._by_bundle) >= self.MAX_BUNDLES:
                self._close_bundles()
            client = self._client(trust_context(cadata=ca_bundle))
            self._by_bundle[ca_bundle] = client
        return client

    def _close_bundles(self) -> None:
        for client in self._by_bundle.values():
            client.close()
        self._by_bundle.clear()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._close_bundles()
        self._default.close()


def pending_count(db: Database) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.state == DeliveryState.PENDING)
        )
