"""A thin client of the node's REST API for escadm's commands.

Every write is sent with a fresh Idempotency-Key and, when the node does not
answer or answers 503 (a switchover, a restart, MAINTENANCE), sent again with
that same key after a doubling pause, for up to [cli] retry_seconds: a write
whose answer was lost is answered again, never done twice. A 4xx is final.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import click
import httpx

from esc.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, ca_file
from esc.config import NodeHome, Settings, api_base_url
from esc.engine.idempotency import HEADER
from esc.security import LOCAL_USER
from esc.tls import TlsError, certificate_problem, client_verify, trusted_ca

USER_ENV = "ESC_USER"
PASSWORD_ENV = "ESC_PASSWORD"
# Pages a listing may take (a million items at the largest page): a loop that
# would run longer is a server bug, not data to wait for.
MAX_PAGES = 1000
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
# The pair's role changes and the node API's package agent are actions on the node
# asked, which keep no key (esc/api/routes/ha.py): sent once, as a retry could act a
# second time.
NODE_ACTIONS = ("/esc/ha/", "/esc/node/")
FIRST_PAUSE = 0.25
MAX_PAUSE = 4.0


def sends_key(method: str, path: str) -> bool:
    """Whether escadm sends this request with an Idempotency-Key (and retries it)."""
    return method.upper() in WRITES and not path.startswith(NODE_ACTIONS)


def _credentials(home: NodeHome) -> tuple[str, str]:
    """$ESC_USER/$ESC_PASSWORD, else the node-local escadm account (root only)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ.get(USER_ENV, "admin"), os.environ[PASSWORD_ENV]
    try:
        return LOCAL_USER, home.local_credential_file.read_text().strip()
    except OSError as exc:
        raise CliError(
            f"cannot read {home.local_credential_file} ({exc.strerror}): run escadm as the "
            f"node's owner, or set {USER_ENV} and {PASSWORD_ENV}",
            EXIT_USAGE,
        ) from None


class _Unanswered(CliError):
    """The node did not answer; `note` says so in a few words, for a retry's note."""

    def __init__(self, message: str, note: str, worth_retrying: bool) -> None:
        super().__init__(message, EXIT_UNREACHABLE)
        self.note = note
        self.worth_retrying = worth_retrying


class ApiClient:
    def __init__(self, home: NodeHome, settings: Settings, timeout: float = 30.0) -> None:
        self.base_url = api_base_url(settings)
        self.home = home
        self.retry_seconds = settings.cli.retry_seconds
        ca = ca_file()
        self._trusted = trusted_ca(home, settings, ca)  # named when verification fails
        try:
            verify = client_verify(home, settings, ca)
        except TlsError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        self._http = httpx.Client(
            base_url=self.base_url, auth=_credentials(home), timeout=timeout, verify=verify
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request (None for an empty one)."""
        response = self.raw(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response of a request that succeeded; errors become CliError. A write is
        sent with a fresh Idempotency-Key, and again with it while the node does not
        answer or answers 503, for up to [cli] retry_seconds."""
        if not sends_key(method, path):
            return _succeeded(self._send(method, path, **kwargs))
        kwargs["headers"] = {**kwargs.get("headers", {}), HEADER: str(uuid.uuid4())}
        deadline = None  # retry_seconds from the first failure (an attempt may time out)
        pause = FIRST_PAUSE
        while True:
            try:
                response = self._send(method, path, **kwargs)
            except _Unanswered as exc:
                if not exc.worth_retrying:
                    raise
                failure, note = exc, exc.note
            else:
                if response.status_code != 503:
                    return _succeeded(response)
                note = _problem_text(response)
                failure = CliError(note, EXIT_FAILED, response.status_code)
            if deadline is None:
                deadline = time.monotonic() + self.retry_seconds
            left = deadline - time.monotonic()
            if left <= 0:
                raise failure
            pause = min(pause, left)
            click.echo(
                f"escadm: {method} {path}: {note}; sending it again in {pause:.2g} s "
                f"with the same {HEADER}",
                err=True,
            )
            time.sleep(pause)
            pause = min(2 * pause, MAX_PAUSE)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a node that does not answer is a CliError (_Unanswered)."""
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            refused = certificate_problem(exc, self.base_url, self._trusted)
            if refused:
                raise CliError(refused, EXIT_UNREACHABLE) from None
            from esc.node.control import not_answering_hint, runs_here

            note = f"ESC does not answer at {self.base_url} ({exc.__class__.__name__})"
            # Refused with no node running in the home: waiting brings none up. Any other
            # failure (a connection dropped before the answer) means a node was there.
            worth_retrying = not isinstance(exc, httpx.ConnectError) or runs_here(self.home)
            raise _Unanswered(
                f"{note}: {not_answering_hint(self.home)}", note, worth_retrying
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def get_all(self, path: str, **params: Any) -> list[Any]:
        """Every item of a paged list, following its `Link: <…>; rel="next"` pages."""
        response = self.raw("GET", path, params={k: v for k, v in params.items() if v is not None})
        items = list(response.json())
        for _ in range(MAX_PAGES):
            following = response.links.get("next", {}).get("url")
            if following is None:
                return items
            response = self.raw("GET", following)
            items += response.json()
        raise CliError(f"{path} has more than {MAX_PAGES} pages; narrow the query", EXIT_FAILED)


def _succeeded(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise CliError(_problem_text(response), EXIT_FAILED, response.status_code)
    return response


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('title', 'Error')} ({response.status_code}): {body.get('detail', '')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
