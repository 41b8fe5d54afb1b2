"""What ESC's small HTTP services have in common: a shared token, checked before any
route, and a listening socket bound before the service says it is ready.

The VIM host (esc.vim.host) and the lab's node provider (esc.ha.labhost) are both
such a service: one process, one token file, JSON both ways, and a driver on the
controller's side that reads the same token file. The token is never logged, and a
token file others may read is refused, at both ends.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import JSONResponse

MIN_TOKEN_LENGTH = 16
MAX_HEAD = 16_384


class TokenError(ValueError):
    """The token file cannot be used; the message names the file and the fix."""


class UsageError(Exception):
    """A bad option of a service; the message names it and the fix."""


def read_token(path: Path, service: str) -> str:
    """The shared token of `service` (e.g. "VIM host") in `path`: its first line,
    refused when others may read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenError(f"cannot read the {service} token file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(
            f"the {service} token file {path} may be read by other users "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise TokenError(
            f"the {service} token file {path} holds no usable token (one line of at least "
            f"{MIN_TOKEN_LENGTH} characters, no spaces); make one with: "
            f"(umask 077; openssl rand -hex 32 > {path})"
        )
    return token


def service_token(token_file: Path | None, env: str, service: str) -> str:
    """A service's token: from --token-file, else from the environment variable `env`."""
    if token_file is not None:
        try:
            return read_token(token_file, service)
        except TokenError as exc:
            raise UsageError(str(exc)) from None
    token = os.environ.get(env, "").strip()
    if not token:
        raise UsageError(f"no token: give --token-file FILE or set ${env}")
    if len(token) < MIN_TOKEN_LENGTH or " " in token:
        raise UsageError(f"${env} is too short a token: use at least {MIN_TOKEN_LENGTH} characters")
    return token


def parse_listen(text: str, example: str, why_ip: str) -> tuple[str, int]:
    """IP:PORT (IPv6 as [IP]:PORT) → (ip, port); port 0: any free port."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"--listen {text!r}: give IP:PORT, e.g. {example} (an IP address, {why_ip})"
        ) from None
    return host, number


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the service announces its URL: a client that
    connects from then on is served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose a free port of an "
            "address of this host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(False)  # the services start processes: keep the socket out of them
    return sock


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def error_response(status: int, message: str, kind: str | None = None) -> JSONResponse:
    """A refusal as the drivers read it: {"error": MESSAGE, "kind": CLASS}."""
    return JSONResponse({"error": message, "kind": kind}, status_code=status)


class BearerGuard:
    """Before any route: the token, and a bounded body; then one log line per change.

    An ASGI wrapper, not a FastAPI dependency: FastAPI reads a request's body before
    its dependencies run, and nothing is read from a client without the token.
    """

    def __init__(
        self, app: Any, token: str, *, service: str, log: logging.Logger, max_body: int
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.service = service
        self.log = log
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        method, path = scope["method"], scope["path"]
        client = scope.get("client") or ("?", 0)
        if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            self.log.warning(
                "refused %s %s from %s: wrong or missing token", method, path, client[0]
            )
            refusal = f"wrong or missing token: send the {self.service}'s token as a Bearer token"
            await error_response(401, refusal)(scope, receive, send)
            return
        length = headers.get(b"content-length", b"0")
        if b"transfer-encoding" in headers or not length.isdigit():
            await error_response(411, "send the body with a Content-Length")(scope, receive, send)
            return
        if int(length) > self.max_body:
            too_large = f"the body is larger than {self.max_body} bytes"
            await error_response(413, too_large)(scope, receive, send)
            return
        started, answered = time.monotonic(), [0]

        async def noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                answered[0] = message["status"]
            await send(message)

        await self.app(scope, receive, noting_status)
        # Queries are polled and would flood the log: changes only.
        level = logging.DEBUG if method == "GET" and answered[0] < 400 else logging.INFO
        self.log.log(
            level,
            "%s %s from %s: %d in %.3f s",
            method,
            path,
            client[0],
            answered[0],
            time.monotonic() - started,
        )


def serve(app: Any, sock: socket.socket, *, keep_alive: float) -> None:
    """Serve the ASGI `app` on the listening `sock` until SIGTERM or SIGINT."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http="h11",
        h11_max_incomplete_event_size=MAX_HEAD,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=int(keep_alive),
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])


class Unreachable(Exception):
    """A TokenClient call got no answer; `timed_out` tells a timeout from a refusal,
    `phase` whether it was connecting or answering."""

    def __init__(self, detail: str, *, timed_out: bool, phase: str) -> None:
        super().__init__(detail)
        self.timed_out = timed_out
        self.phase = phase


class TokenClient:
    """The client side of a service here: one kept-alive httpx client (thread-safe: the
    callers' threads share its connections) under API, the bearer token read from its
    file on first use and again after a 401 (it may have been fixed meanwhile). Errors
    stay the caller's: `exchange` answers (status, JSON body or None, the body's
    "error" message), or raises Unreachable; a bad token file raises TokenError."""

    def __init__(
        self, url: str, api: str, token_file: Path, service: str, timeout: float, connect: float
    ) -> None:
        self.url = url.rstrip("/")
        self.token_file = Path(token_file)
        self.service = service
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._client = httpx.Client(
            base_url=self.url + api,
            timeout=httpx.Timeout(timeout, connect=min(timeout, connect)),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see the token
        )

    def close(self) -> None:
        self._client.close()

    def _bearer(self) -> str:
        with self._token_lock:
            if self._token is None:
                self._token = read_token(self.token_file, self.service)
            return self._token

    def exchange(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any, str | None]:
        """`timeout`: this call's own bound, for one that takes long by design."""
        headers = {"Authorization": f"Bearer {self._bearer()}"}
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=self._client.timeout.connect)
        try:
            response = self._client.request(method, path, json=body, headers=headers, **extra)
        except httpx.TimeoutException as exc:
            phase = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "answering"
            raise Unreachable(str(exc), timed_out=True, phase=phase) from None
        except httpx.TransportError as exc:
            detail = str(exc) or exc.__class__.__name__
            raise Unreachable(detail, timed_out=False, phase="connecting") from None
        try:
            answer = response.json() if response.content else None
        except ValueError:
            answer = None
        if response.content and answer is None:
            answer = _NOT_JSON
        if response.status_code == 401:
            with self._token_lock:
                self._token = None
        message = answer.get("error") if isinstance(answer, dict) else None
        return response.status_code, answer, message


# What `exchange` answers for a body that is not JSON (not this kind of service).
_NOT_JSON = object()


def not_json(answer: Any) -> bool:
    return answer is _NOT_JSON


def service_app(
    title: str,
    what: str,
    refused: type[Exception],
    refusal: Callable[[Exception], JSONResponse],
    logger: logging.Logger,
    invalid_kind: str | None = None,
) -> Any:
    """A FastAPI app whose every error is JSON `{"error", "kind"}`: `refused` (the
    service's own refusals) as `refusal` says, a bad body 422 (of `invalid_kind`), an
    unknown path or method as Starlette says, anything else 500 naming `what` failed
    (the traceback in `logger`).
    No OpenAPI or docs pages: the client is ESC's own."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app = FastAPI(title=title, openapi_url=None, docs_url=None, redoc_url=None)

    @app.exception_handler(refused)
    async def refused_handler(request: Request, exc: Exception) -> JSONResponse:
        return refusal(exc)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return error_response(422, f"bad request: {problems}", invalid_kind)

    @app.exception_handler(HTTPException)
    async def not_served(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"{what} failed: {exc.__class__.__name__}: {exc}")

    return app
