"""A thin client of the node's REST API for escadm's commands."""

from __future__ import annotations

import os
from typing import Any

import httpx

from esc.cli.common import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, ca_file
from esc.config import NodeHome, Settings, api_base_url
from esc.security import LOCAL_USER
from esc.tls import TlsError, certificate_problem, client_verify, trusted_ca

USER_ENV = "ESC_USER"
PASSWORD_ENV = "ESC_PASSWORD"
# Pages a listing may take (a million items at the largest page): a loop that
# would run longer is a server bug, not data to wait for.
MAX_PAGES = 1000


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


class ApiClient:
    def __init__(self, home: NodeHome, settings: Settings, timeout: float = 30.0) -> None:
        self.base_url = api_base_url(settings)
        self.home = home
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
        """The response of a request that succeeded; errors become CliError."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            refused = certificate_problem(exc, self.base_url, self._trusted)
            if refused:
                raise CliError(refused, EXIT_UNREACHABLE) from None
            from esc.node.control import not_answering_hint

            raise CliError(
                f"ESC does not answer at {self.base_url} ({exc.__class__.__name__}): "
                + not_answering_hint(self.home),
                EXIT_UNREACHABLE,
            ) from None
        if response.status_code >= 400:
            raise CliError(_problem_text(response), EXIT_FAILED, response.status_code)
        return response

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


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('title', 'Error')} ({response.status_code}): {body.get('detail', '')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
