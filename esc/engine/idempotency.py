"""Idempotency keys: a northbound write retried with the same key gets its first answer.

A client that lost the answer to a write (a switchover or failover between the
commit and the reply, a timeout) cannot tell whether the write happened. Sent with
an `Idempotency-Key` header, the write and the answer it got are committed together,
in one database transaction (the row replicates with the write): a retry with the
same key and the same request is answered with that answer again, and no second
tenant or transaction is made, whichever node of a pair answers it. The same key
with another request is refused. A write refused by a rule (409, 422) records
nothing: retried, it is checked anew.

Keys belong to the user who sent them and are kept `[api] idempotency_ttl` seconds.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from esc.db.models import IdempotencyKey
from esc.errors import InvalidRequest, MalformedRequest

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII without blanks, as a UUID or any client's token: it is stored and
# shown in messages.
_KEY_REGEX = r"[\x21-\x7e]{1,255}"
_KEY = re.compile(_KEY_REGEX)
# The same rule in the header's JSON Schema (OpenAPI).
KEY_PATTERN = {"pattern": f"^{_KEY_REGEX}$"}


@dataclass(frozen=True)
class Answer:
    """What the API answered a write: replayed as it was."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyedRequest:
    """A write sent with an Idempotency-Key, and what makes two requests the same."""

    user: str
    key: str
    method: str
    path: str
    fingerprint: str

    @classmethod
    def of(cls, user: str, key: str, method: str, path: str, query: str, body: bytes):
        if not _KEY.fullmatch(key):
            raise MalformedRequest(
                f"{HEADER} must be 1 to 255 printable ASCII characters without blanks (a UUID, say)"
            )
        digest = hashlib.sha256()
        for part in (method.encode(), path.encode(), query.encode(), body):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return cls(user, key, method, path, digest.hexdigest())


class Replayed(Exception):  # not an error: the first answer, again
    """The write was done already with this key: answer as the first time."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"replayed answer {answer.status}")
        self.answer = answer


def replay_if_done(session: Session, request: KeyedRequest) -> None:
    """Raise Replayed with the first answer when this key was used for this request;
    refuse the key used for another request."""
    row = session.get(IdempotencyKey, (request.user, request.key))
    if row is None:
        return
    if row.fingerprint != request.fingerprint:
        raise InvalidRequest(
            f"{HEADER} {request.key!r} was used for another request ({row.method} {row.path} "
            f"at {row.created_at.isoformat(timespec='seconds')}); send a new key for a new "
            "request"
        )
    raise Replayed(Answer(row.status, row.body, dict(row.headers)))


def record(session: Session, request: KeyedRequest, answer: Answer) -> None:
    """Keep the answer with the write, in the write's own transaction."""
    session.add(
        IdempotencyKey(
            user=request.user,
            key=request.key,
            fingerprint=request.fingerprint,
            method=request.method,
            path=request.path,
            status=answer.status,
            body=answer.body,
            headers=answer.headers,
        )
    )


def prune(session: Session, ttl: float, now: datetime | None = None) -> int:
    """Forget the keys older than `ttl` seconds; how many were removed."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=ttl)
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return result.rowcount or 0
