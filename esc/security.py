"""Passwords: generated, hashed with scrypt (standard library), verified.

Verifying scrypt costs tens of milliseconds by design; a client sends
basic auth with every request, so a successful check is remembered for a
short while (keyed by a keyed hash of the credentials, never the password
itself) to keep read latency low.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

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


class VerifiedCache:
    """Credentials that verified recently, so each request pays neither for a
    database lookup nor for scrypt.

    Keyed by a keyed hash of (user, password), never the password itself. An
    entry lives `ttl` seconds: a changed or removed account stops working
    within that time.
    """

    def __init__(self, ttl: float = _CACHE_SECONDS) -> None:
        self.ttl = ttl
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
        if stored is None or not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._seen[fingerprint] = now + self.ttl
        return True
