"""Pages of a long list: a `limit` per page and an opaque cursor to the next.

A page that is not the last carries `Link: <URL>; rel="next"` (RFC 8288),
the same request with `cursor` set; the body stays a plain list, so a client
that reads one page is unchanged. The cursor is opaque to clients (base64url
JSON of the last row's sort key), so the order can change without breaking them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Query, Request, Response

from esc.errors import MalformedRequest

MAX_PAGE = 1000

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page, at most {MAX_PAGE}.")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=512,
        description='Where the next page starts: taken from the `Link: <…>; rel="next"` '
        "header of the previous page.",
    ),
]

NEXT_LINK_HEADER = {
    "Link": {
        "description": 'Present when more items follow: `<URL>; rel="next"`, the URL of the '
        "next page.",
        "schema": {"type": "string"},
    }
}


def encode_cursor(key: dict[str, Any]) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, **fields: Callable[[Any], Any]) -> dict[str, Any]:
    """The sort key in `cursor`, each field converted by its callable, or 400 if
    this API did not give the cursor out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
        if not isinstance(key, dict) or set(key) != set(fields):
            raise ValueError(cursor)
        return {name: convert(key[name]) for name, convert in fields.items()}
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise MalformedRequest(
            f"cursor {cursor[:40]!r} is not one this API gave out: take it from the "
            'Link rel="next" header of the previous page, or leave it out to start again'
        ) from None


def link_next(request: Request, response: Response, cursor: str) -> None:
    url = request.url.include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
