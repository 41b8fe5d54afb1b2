"""The REST API of a Cisco CSP 2100/5000, as the csp driver speaks it.

CSP serves ConfD's REST API over HTTPS with HTTP basic auth: JSON bodies of
the media type `application/vnd.yang.data+json` both ways, and every refusal
as ConfD's error body, `{"errors": {"error": [{"error-message", "error-tag",
...}]}}`, whose messages are CSP's own words. Files go to the CSP's
repository through its web login (a session cookie) and a multipart upload.

What reaches the driver: no answer (connection refused or reset, a timeout)
or a 5xx is a TransientVimError (the CSP is down, restarting or busy); a 401
is a PermanentVimError naming the credential settings; a certificate that
[vim.csp] cacert does not vouch for is a PermanentVimError naming it; any
other 4xx is a CspRefusal carrying CSP's messages, its status and tags.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from esc.tls import trust_context, verify_failure
from esc.vim.base import PermanentVimError, TransientVimError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.yang.data+json"
# Connecting is quick or the CSP is not there: no need to wait a whole call's timeout.
CONNECT_TIMEOUT = 5.0
# OpenSSL's X509_V_ERR_* codes that name a fix of their own.
_HOST_MISMATCH = {62, 64}
_EXPIRED = 10


class CspRefusal(PermanentVimError):
    """The CSP answered a 4xx: `status` and ConfD's error tags say which refusal."""

    def __init__(self, message: str, status: int, tags: tuple[str, ...]) -> None:
        super().__init__(message)
        self.status, self.tags = status, tags


def error_words(response: httpx.Response) -> tuple[str, tuple[str, ...]]:
    """CSP's own words in a refusal (its error messages, joined) and ConfD's error tags."""
    try:
        errors = member(response.json(), "errors")
        items = member(errors, "error")
        items = items if isinstance(items, list) else [items]
        messages = [str(e["error-message"]) for e in items if e.get("error-message")]
        tags = tuple(str(e["error-tag"]) for e in items if e.get("error-tag"))
        if messages:
            return "; ".join(messages), tags
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = " ".join(response.text.split())[:300]
    return text or f"HTTP {response.status_code} {response.reason_phrase}", ()


def member(body: Any, key: str) -> Any:
    """body[key], where ConfD may qualify the key with its module (`resource:resource`)."""
    if not isinstance(body, dict):
        raise KeyError(key)
    if key in body:
        return body[key]
    for name, value in body.items():
        if isinstance(name, str) and name.rpartition(":")[2] == key:
            return value
    raise KeyError(key)


class CspClient:
    """One CSP's REST API; the password is read, and TLS set up, at the first call."""

    def __init__(
        self,
        url: str,
        username: str,
        password: Callable[[], str],
        *,
        cacert: Path | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.username = username
        self.cacert, self.insecure, self.timeout = cacert, insecure, timeout
        self._password = password
        self._http: httpx.Client | None = None
        self._guard = threading.Lock()
        self._uploading = threading.Lock()

    def close(self) -> None:
        with self._guard:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _client(self) -> httpx.Client:
        with self._guard:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.url,
                    auth=httpx.BasicAuth(self.username, self._password()),
                    verify=self._verify(),
                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
                    headers={"Accept": MEDIA_TYPE},
                )
            return self._http

    def _verify(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        if self.cacert is None:
            return True
        try:
            return trust_context(cafile=self.cacert)
        except FileNotFoundError:
            raise PermanentVimError(
                f"[vim.csp] cacert {self.cacert} does not exist: save the CSP's certificate "
                "there (PEM), or point cacert at it"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise PermanentVimError(
                f"[vim.csp] cacert {self.cacert} cannot be used ({exc}): it must be the "
                "CSP's certificate, or the CA that issued it, in PEM"
            ) from None

    # requests -----------------------------------------------------------------------------

    def call(
        self, method: str, path: str, what: str, body: Any = None, *, missing_ok: bool = False
    ) -> Any:
        """The JSON answer (None for an empty one) of `method path` with `body` as JSON; a
        404 answers None too when `missing_ok`. `what` says what it is for, in errors."""
        content, headers = None, {}
        if body is not None:
            content, headers = json.dumps(body), {"Content-Type": MEDIA_TYPE}
        response = self._send(method, path, what, content=content, headers=headers)
        if response.status_code == 404 and missing_ok:
            return None
        return self._answer(response, method, path, what)

    def upload(self, name: str, data: bytes, what: str) -> None:
        """Put the file `name` into the CSP's repository, as its web UI does: log in for
        a session cookie, upload, log out. What these answer besides their status is the
        web UI's business, not JSON to read."""
        # One upload at a time: the session cookie is the client's, and one upload's
        # logout would end another's session.
        with self._uploading:
            self._accepted(self._send("POST", "/api/login", what), what)
            try:
                files = {"file": (name, data, "application/octet-stream")}
                self._accepted(self._send("POST", "/api/uploadfile", what, files=files), what)
            finally:
                try:
                    self._send("POST", "/api/logout", what)
                except (PermanentVimError, TransientVimError) as exc:
                    # The session times out on the CSP by itself; the upload is what counted.
                    log.warning("CSP logout after an upload failed: %s", exc)

    @staticmethod
    def _accepted(response: httpx.Response, what: str) -> None:
        if response.status_code >= 300:
            words, tags = error_words(response)
            raise CspRefusal(f"the CSP refused to {what}: {words}", response.status_code, tags)

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client().request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise TransientVimError(
                f"the CSP at {self.url} did not answer within {self.timeout:g} s "
                f"([vim.csp] timeout) to {what}"
            ) from None
        except httpx.TransportError as exc:
            refused = verify_failure(exc)
            if refused is not None:
                raise PermanentVimError(self._certificate_problem(refused)) from None
            raise TransientVimError(
                f"the CSP at {self.url} cannot be reached to {what}: {exc or type(exc).__name__}; "
                "check [vim.csp] url and that the CSP is up"
            ) from None
        status = response.status_code
        if status == 401:
            words, _ = error_words(response)
            raise PermanentVimError(
                f"the CSP at {self.url} refused the credentials of user {self.username!r} to "
                f"{what} (authentication failed: {words}); check [vim.csp] username and the "
                "password in password_file / password_env"
            )
        if status >= 500 or status == 429:
            words, _ = error_words(response)
            raise TransientVimError(f"the CSP at {self.url} failed to {what}: {words}")
        return response

    def _answer(self, response: httpx.Response, method: str, path: str, what: str) -> Any:
        status = response.status_code
        if status >= 400:
            words, tags = error_words(response)
            raise CspRefusal(f"the CSP refused to {what}: {words}", status, tags)
        if status >= 300 or (
            response.content and "json" not in response.headers.get("content-type", "")
        ):
            raise PermanentVimError(
                f"{self.url} answered HTTP {status} to {method} {path}, not as a CSP does: "
                "check [vim.csp] url"
            )
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            raise TransientVimError(
                f"the CSP at {self.url} sent a malformed answer to {what}: {response.text[:200]!r}"
            ) from None

    def _certificate_problem(self, error: ssl.SSLCertVerificationError) -> str:
        where = f"the certificate of the CSP at {self.url}"
        if error.verify_code in _HOST_MISMATCH:
            return (
                f"{where} is not issued for that host ({error.verify_message}): give [vim.csp] "
                "url the host name or address the certificate names"
            )
        if error.verify_code == _EXPIRED:
            return f"{where} has expired ({error.verify_message}): renew it on the CSP"
        trusted = f"[vim.csp] cacert ({self.cacert})" if self.cacert else "the system's CAs"
        return (
            f"{where} is not trusted by {trusted}: {error.verify_message}; set [vim.csp] cacert "
            "to the CSP's certificate (or the CA that issued it)"
        )
