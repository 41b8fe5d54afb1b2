"""The HTTP/1.1 server of the northbound API: uvicorn, with bounded request heads.

uvicorn's httptools parser has no limit on a request's head: a client could
make the server buffer a 50 MB header before any route (or auth) runs. h11
refuses a head larger than its `max_incomplete_event_size` while it is still
arriving, so the server buffers at most that plus one read. It has no bound
on the number of header fields, and uvicorn answers h11's refusals with a
plain 400: this protocol adds the count and answers both with 431 (Request
Header Fields Too Large) as a problem+json body, then closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from esc.config import ApiSettings

log = logging.getLogger(__name__)

_TOO_LARGE = 431


class _BoundedConnection(h11.Connection):
    """An h11 server connection that also bounds the number of header fields and
    remembers why it refused a request."""

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.refusal: str | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == _TOO_LARGE:
                self.refusal = self._too_large()
            raise
        if isinstance(event, h11.Request):
            self._check(event)
        return event

    def _check(self, request: h11.Request) -> None:
        # h11 bounds only a head still arriving; one that came in a single read
        # is measured here (request line and "name: value" lines).
        size = len(request.method) + len(request.target) + 12
        size += sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
        if size > self.max_head_bytes:
            self.refusal = self._too_large()
        elif len(request.headers) > self.max_headers:
            self.refusal = (
                f"the request has {len(request.headers)} header fields, more than "
                f"{self.max_headers}; send fewer or raise [api] max_headers in esc.toml"
            )
        if self.refusal is not None:
            raise h11.RemoteProtocolError(self.refusal, error_status_hint=_TOO_LARGE)

    def _too_large(self) -> str:
        return (
            f"the request line and headers are larger than {self.max_head_bytes} "
            "bytes; send smaller headers or raise [api] max_header_bytes in esc.toml"
        )


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the bounds of [api] in esc.toml."""

    limits: ApiSettings = ApiSettings()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedConnection(self.limits.max_header_bytes, self.limits.max_headers)

    def send_400_response(self, msg: str) -> None:
        refusal = getattr(self.conn, "refusal", None)
        if refusal is None:
            super().send_400_response(msg)
            return
        log.warning("refused a request from %s: %s", self._peer(), refusal)
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Request header fields too large",
                "status": _TOO_LARGE,
                "detail": refusal,
            }
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(
                status_code=_TOO_LARGE, headers=headers, reason=b"Request Header Fields Too Large"
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown client"


def protocol_for(api: ApiSettings) -> type[asyncio.Protocol]:
    """The protocol class uvicorn builds one of per connection, bound to `api`'s limits."""
    return type("EscH11Protocol", (BoundedH11Protocol,), {"limits": api})


def server_config(app: Any, api: ApiSettings, **options: Any) -> uvicorn.Config:
    """How escmanager (and the tests that need a real server) run uvicorn."""
    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        http=protocol_for(api),
        log_config=None,
        access_log=False,
        **options,
    )
