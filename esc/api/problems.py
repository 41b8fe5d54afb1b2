"""Errors as application/problem+json (RFC 9457), and the bounds on requests.

Every error a client sees names the problem and what to do; an unexpected
exception is a 500 problem that points to the log, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from esc.api.answers import respond
from esc.engine.idempotency import Replayed
from esc.errors import (
    Conflict,
    EscError,
    InsufficientStorage,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    TooLarge,
    Unavailable,
)
from esc.nesting import TooDeep, check_json_depth

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS_OF: list[tuple[type[EscError], int]] = [
    (MalformedRequest, 400),
    (InvalidRequest, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (TooLarge, 413),
    (InsufficientStorage, 507),
]


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="ESC"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _status(exc: EscError) -> int:
    return next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(EscError)
    async def _esc_error(_request: Request, exc: EscError) -> JSONResponse:
        return problem(_status(exc), exc.title, str(exc))

    @app.exception_handler(Replayed)
    async def _replayed(_request: Request, exc: Replayed) -> Response:
        return respond(exc.answer, replayed=True)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "Invalid request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        title = _TITLES.get(exc.status_code, "Error")
        return problem(exc.status_code, title, detail, headers=exc.headers)

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away under the request (its server killed or restarting,
        # on a pair a failover under way): the client retries, nothing to debug here.
        cause = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
        return problem(
            503,
            Unavailable.title,
            f"the node's database does not answer ({cause}); nothing was changed by this "
            "request unless a later read shows it: retry in a moment",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "Internal error",
            "the controller failed unexpectedly; see log/escmanager.log on the node",
        )


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    413: "Request too large",
    415: "Unsupported media type",
    429: "Too many failed logins",
}


class NulInUrl:
    """Refuse a URL holding a NUL character with 400, before any route runs: no
    database takes a NUL in text (PostgreSQL refuses it), whichever parameter holds it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", "")
        ):
            detail = "the URL holds a NUL character (%00): remove it"
            await problem(400, _TITLES.get(400, "Error"), detail)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Refuse a body larger than `limit` bytes with 413, declared or streamed. A route
    under a prefix of `own_bound` streams its body and bounds it itself: a release
    package is far larger than any other request."""

    def __init__(self, app: ASGIApp, limit: int, own_bound: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.own_bound = own_bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.own_bound):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number")
                return
            if too_big:
                await self._refuse(scope, receive, send, 413, self._detail())
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send, 413, self._detail())

    def _detail(self) -> str:
        return (
            f"request body is larger than {self.limit} bytes; send a smaller request or "
            "raise [api] max_body_bytes in esc.toml"
        )

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        title = _TITLES.get(status, "Error")
        await problem(status, title, detail)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _declares_json(scope: Scope) -> bool:
    """Whether FastAPI would read this body as JSON: declared so, or not declared at all."""
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    media = content_type.split(b";", 1)[0].strip().lower()
    return not media or media == b"application/json" or media.endswith(b"+json")


class JsonDepthLimit:
    """Refuse a JSON body nesting deeper than the bound with 400, before any route
    parses it: the decoder would recurse into a RecursionError (a 500). Bodies under a
    prefix of `raw` are never JSON: their routes stream them (unbuffered here)."""

    def __init__(self, app: ASGIApp, raw: tuple[str, ...] = ()) -> None:
        self.app = app
        self.raw = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope["type"] == "http" and scope["path"].startswith(self.raw)
        if scope["type"] != "http" or raw or not _declares_json(scope):
            await self.app(scope, receive, send)
            return
        # The body is already bounded by BodySizeLimit, which wraps this one.
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            check_json_depth(body)
        except TooDeep as exc:
            await problem(400, _TITLES[400], str(exc))(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class NodeHeader:
    """Name the node that answered in every response (`ESC-Node`): behind a pair's VIP a
    client, an operator with curl, or a test can tell which node served a request."""

    def __init__(self, app: ASGIApp, node: str) -> None:
        self.app = app
        self.header = (b"esc-node", node.encode("utf-8", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, named)
