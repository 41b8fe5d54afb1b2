"""Delivers events to subscribers' callback URLs from the outbox.

At least once, in order per (subscription, deployment): only the oldest
pending delivery of each such pair is ever attempted, so a subscriber that
is down holds back that deployment's later events until it answers again,
with exponential backoff between attempts. The outbox is in the database,
so pending deliveries survive a controller restart.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import httpx
from sqlalchemy import func, select

from esc.config import NotificationSettings
from esc.db.models import Delivery, DeliveryState, Event, Subscription, utcnow
from esc.db.session import Database
from esc.engine import callbacks
from esc.engine.events import event_payload, outbox_changed

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
        with httpx.Client(timeout=self.settings.timeout, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    attempted = self.deliver_due(client)
                except Exception:
                    log.exception("notifier: delivery round failed; retrying")
                    attempted = 0
                if not attempted:
                    outbox_changed.wait(IDLE_POLL_SECONDS)
                    outbox_changed.clear()

    def _due_heads(self) -> list[tuple[int, str, int]]:
        """(delivery id, callback URL, event id) of the oldest pending delivery per
        (subscription, deployment), when it is due."""
        heads = (
            select(func.min(Delivery.id).label("id"))
            .where(Delivery.state == DeliveryState.PENDING)
            .group_by(Delivery.subscription_id, Delivery.ordering_key)
            .subquery()
        )
        query = (
            select(Delivery.id, Subscription.callback_url, Delivery.event_id)
            .join(heads, heads.c.id == Delivery.id)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(Delivery.next_attempt_at <= utcnow())
            .order_by(Delivery.id)
            .limit(BATCH)
        )
        with self.db.read() as session:
            return [tuple(row) for row in session.execute(query)]

    def deliver_due(self, client: httpx.Client) -> int:
        heads = self._due_heads()
        for delivery_id, url, event_id in heads:
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


def pending_count(db: Database) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.state == DeliveryState.PENDING)
        )
