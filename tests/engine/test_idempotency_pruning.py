"""Idempotency keys are forgotten once older than [api] idempotency_ttl, by the active
role's periodic loop; younger ones are kept (a retry within the TTL is still answered)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import Node, wait_for
from pydantic import ValidationError
from sqlalchemy import select

from esc.config import ApiSettings
from esc.db.models import IdempotencyKey
from esc.engine import active_role, idempotency
from esc.engine.controller import Controller


def _key(key: str, age: float) -> IdempotencyKey:
    return IdempotencyKey(
        user="admin",
        key=key,
        fingerprint="0" * 64,
        method="POST",
        path="/v0/tenants",
        status=201,
        body={"name": key},
        headers={},
        created_at=datetime.now(UTC) - timedelta(seconds=age),
    )


def _keys(controller: Controller) -> set[str]:
    with controller.db.read() as session:
        return set(session.scalars(select(IdempotencyKey.key)))


def test_prune_forgets_exactly_the_keys_older_than_the_ttl(controller: Controller) -> None:
    with controller.db.write() as session:
        session.add_all([_key("old", 3600), _key("young", 60)])
    now = datetime.now(UTC)
    with controller.db.write() as session:
        assert idempotency.prune(session, ttl=3599, now=now) == 1
    assert _keys(controller) == {"young"}
    with controller.db.write() as session:
        assert idempotency.prune(session, ttl=3599, now=now) == 0
    # A day later, the young one has expired too.
    with controller.db.write() as session:
        assert idempotency.prune(session, ttl=3599, now=now + timedelta(days=1)) == 1
    assert _keys(controller) == set()


def test_the_active_role_forgets_expired_keys_as_it_runs(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(active_role, "PRUNE_INTERVAL", 0.2)
    node.settings.api.idempotency_ttl = 120
    controller = Controller(node.home, node.settings)
    controller.start()
    request = idempotency.KeyedRequest.of("admin", "kept", "POST", "/v0/tenants", "", b"t1")
    keyed = controller.northbound.keyed(request, lambda t: idempotency.Answer(201, t.name))
    try:
        keyed.create_tenant("t1")
        with controller.db.write() as session:
            session.add(_key("expired", 121))
        wait_for(lambda: _keys(controller) == {"kept"}, 10, "the expired key forgotten")
        # The kept key still answers a retry with its first answer.
        with pytest.raises(idempotency.Replayed) as replayed:
            keyed.create_tenant("t1")
        assert replayed.value.answer == idempotency.Answer(201, "t1")
    finally:
        controller.stop(timeout=10)


def test_a_ttl_shorter_than_a_minute_is_refused() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 60"):
        ApiSettings(idempotency_ttl=5)
