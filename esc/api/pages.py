"""Pages of a long list: a `limit` per page and an opaque cursor to the next.

A page that is not the last carries `Link: <URL>; rel="next"` (RFC 8288),
the same request with `cursor` set; the body stays a plain list, so a client
that reads one page is unchanged. The cursor is opaque to clients: it holds
the last item's sort key in a form whose pattern the spec declares, so any
cursor the pattern admits is a valid place to start (no request the spec
calls valid is refused), and the order can change without breaking clients.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Query, Request, Response

MAX_PAGE = 1000

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page, at most {MAX_PAGE}.")]

_CURSOR_HELP = (
    'Where the next page starts: take it from the `Link: <…>; rel="next"` header of the '
    "previous page rather than building it."
)
# Microseconds since the epoch (16 digits reach the year 2286), then the id.
_TIME_AND_ID = r"^[0-9]{1,16}_[0-9a-f-]{1,36}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

TimeCursor = Annotated[str | None, Query(pattern=_TIME_AND_ID, description=_CURSOR_HELP)]
IdCursor = Annotated[int | None, Query(ge=0, le=2**63 - 1, description=_CURSOR_HELP)]

NEXT_LINK_HEADER = {
    "Link": {
        "description": 'Present when more items follow: `<URL>; rel="next"`, the URL of the '
        "next page.",
        "schema": {"type": "string"},
    }
}


def time_cursor(at: datetime, item_id: str) -> str:
    return f"{(at - _EPOCH) // _MICROSECOND}_{item_id}"


def read_time_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a time cursor holds; its pattern was checked by the query's schema."""
    micros, _, item_id = cursor.partition("_")
    return _EPOCH + int(micros) * _MICROSECOND, item_id


def link_next(request: Request, response: Response, cursor: str | int) -> None:
    url = request.url.include_query_params(cursor=cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
