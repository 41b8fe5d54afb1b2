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

_N, _R, _P = 2**14, 8, 1
_CACHE_SECONDS = 300.0
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
    """Credentials that verified recently, so each request need not pay for scrypt."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def _fingerprint(self, user: str, password: str, stored: str) -> bytes:
        # The stored hash is part of the key: a changed password invalidates at once.
        return hmac.digest(self._key, f"{user}\0{password}\0{stored}".encode(), "sha256")

    def check(self, user: str, password: str, stored: str) -> bool:
        fingerprint = self._fingerprint(user, password, stored)
        now = time.monotonic()
        with self._lock:
            if self._seen.get(fingerprint, 0) > now:
                return True
        if not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
            self._seen[fingerprint] = now + _CACHE_SECONDS
        return True
