"""Polling a VM over HTTP: one kept-alive connection per poller.

MONA polls thousands of VMs a second, so this is an asyncio Protocol, not
an HTTP client library: a poll is one write and one read on a connection
that stays open (the local VNF speaks HTTP/1.1), with no per-request task,
connection set-up or header object. It reads only what a VM's health and
metrics endpoints send: a status line, Content-Length, a small JSON body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast
from urllib.parse import urlsplit

MAX_RESPONSE = 65_536


class ProbeError(Exception):
    """The VM did not answer (refused, reset, timed out, or answered garbage)."""


class ProbeTimeout(ProbeError):
    """No answer in time: the VM, or a monitor too busy to read the answer."""


def _parse(buffer: bytearray) -> tuple[int, bytes, int, bool] | None:
    """(status, body, bytes used, keep alive) once a whole response is in `buffer`."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_RESPONSE:
            raise ProbeError("response header too large")
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProbeError(f"not an HTTP response: {head[0][:80]!r}")
    length, keep_alive = 0, parts[0] == "HTTP/1.1"
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip()) if value.strip().isdigit() else -1
        elif name == "connection":
            keep_alive = value.strip().lower() == "keep-alive"
    if not 0 <= length <= MAX_RESPONSE:
        raise ProbeError("response without a usable Content-Length")
    start = end + 4
    if len(buffer) < start + length:
        return None
    return int(parts[1]), bytes(buffer[start : start + length]), start + length, keep_alive


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.open = True
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse(self.buffer)
        except (ProbeError, ValueError) as exc:
            waiter.set_exception(ProbeError(str(exc)))
            self.close()
            return
        if parsed is not None:
            status, body, used, self.keep_alive = parsed
            del self.buffer[:used]
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ProbeError(f"connection closed: {exc or 'by the VM'}"))

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


class HttpProbe:
    """GET requests to one VM address (http://HOST:PORT), one at a time."""

    def __init__(self, address: str) -> None:
        parts = urlsplit(address)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"not an http://HOST:PORT address: {address!r}")
        self.host, self.port = parts.hostname, parts.port
        self._connection: _Connection | None = None

    async def get_json(self, path: str, timeout: float) -> tuple[int, Any]:
        """(status, decoded JSON body); ProbeError when the VM does not answer in time."""
        try:
            async with asyncio.timeout(timeout):
                status, body = await self._request(path)
        except TimeoutError:
            self.close()  # a late answer would be read as the next poll's
            raise ProbeTimeout(f"no answer within {timeout:g} s") from None
        except OSError as exc:
            self.close()
            raise ProbeError(str(exc)) from None
        try:
            return status, json.loads(body)
        except ValueError:
            raise ProbeError("the answer is not JSON") from None

    async def _request(self, path: str) -> tuple[int, bytes]:
        connection = self._connection
        if connection is None or not connection.open:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._connection = connection
        connection.buffer.clear()
        connection.waiter = asyncio.get_running_loop().create_future()
        assert connection.transport is not None
        connection.transport.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        try:
            return await connection.waiter
        except ProbeError:
            self.close()
            raise
        finally:
            if not connection.keep_alive:
                self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
