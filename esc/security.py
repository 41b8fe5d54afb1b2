"""Passwords: generated, hashed with scrypt (standard library), verified.

Verifying scrypt costs tens of milliseconds by design; a client sends
basic auth with every request, so a successful check is remembered for a
short while (keyed by a keyed hash of the credentials, never the password
itself) to keep read latency low. An unknown user costs as much as a wrong
password, so the time of a refusal does not tell which user names exist, and
a client that keeps failing is refused before any hash is computed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import cache

_N, _R, _P = 2**14, 8, 1
_CACHE_SECONDS = 30.0
ADMIN_USER = "admin"
LOCAL_USER = "escadm"


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    encoded_salt = base64.b64encode(salt).decode()
    return f"scrypt${_N}${_R}${_P}${encoded_salt}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


@cache
def _unknown_user_hash() -> str:
    """A hash of the current scheme and cost that no password is known for:
    verified in place of an unknown user's, so both refusals take as long."""
    return hash_password(secrets.token_urlsafe(18))


class VerifiedCache:
    """Credentials that verified recently, so each request pays neither for a
    database lookup nor for scrypt.

    Keyed by a keyed hash of (user, password), never the password itself. An
    entry lives `ttl` seconds: a changed or removed account stops working
    within that time.
    """

    def __init__(self, ttl: float = _CACHE_SECONDS) -> None:
        self.ttl = ttl
        _unknown_user_hash()  # made now, so the first unknown user does not pay for it
        self._key = secrets.token_bytes(32)
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _fingerprint(self, user: str, password: str) -> bytes:
        return hmac.digest(self._key, f"{user}\0{password}".encode(), "sha256")

    def check(self, user: str, password: str, stored_hash: Callable[[str], str | None]) -> bool:
        """True when the credentials are valid; `stored_hash(user)` is asked only on a miss."""
        fingerprint = self._fingerprint(user, password)
        now = time.monotonic()
        with self._lock:
            if self._seen.get(fingerprint, 0) > now:
                return True
        stored = stored_hash(user)
        if stored is None:
            verify_password(password, _unknown_user_hash())
            return False
        if not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._seen[fingerprint] = now + self.ttl
        return True


class FailureBudget:
    """How many failed logins each client may make within a sliding window.

    Once a client has spent its budget it is refused for the rest of the
    window without any password check, so guessing costs the server nothing
    and cannot slow other clients down. Clients are told apart by `key` (the
    HTTP layer uses the peer address).
    """

    # Clients remembered at most; past it the stalest are forgotten first, so
    # many addresses cannot grow memory without bound.
    MAX_CLIENTS = 10_000

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, key: str) -> int | None:
        """Whole seconds until `key` may try again, or None while it has budget left."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(key, now)
            if failures is None or len(failures) < self.max_failures:
                return None
            return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures = self._recent(key, now)
            if failures is None:
                if len(self._failures) >= self.MAX_CLIENTS:
                    self._forget_stalest()
                failures = self._failures[key] = deque(maxlen=self.max_failures)
            failures.append(now)

    def _forget_stalest(self) -> None:
        by_last = sorted(
            self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0
        )
        for key in by_last[: len(by_last) // 10 + 1]:
            del self._failures[key]
