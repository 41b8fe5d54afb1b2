"""Typed dependencies of the routes: the controller, a DB session, the caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, HTTPException, Request, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy.orm import Session

from esc.api.answers import respond
from esc.engine.controller import Controller
from esc.engine.idempotency import HEADER, KEY_PATTERN, Answer, KeyedRequest
from esc.security import FailureBudget

_basic = HTTPBasic(auto_error=False, realm="ESC")


def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def read_session(controller: ControllerDep) -> Iterator[Session]:
    with controller.db.read() as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session)]


def require_user(
    request: Request,
    controller: ControllerDep,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> str:
    if credentials is None:
        raise HTTPException(401, "this endpoint needs HTTP basic authentication (user admin)")
    budget: FailureBudget = request.app.state.auth_failures
    client = request.client.host if request.client else ""
    wait = budget.retry_after(client)
    if wait is not None:
        raise HTTPException(
            429,
            f"{budget.max_failures} failed logins from {client} within "
            f"{budget.window:g} s; try again in {wait} s with the right user name and password",
            headers={"Retry-After": str(wait)},
        )
    if not controller.authenticate(credentials.username, credentials.password):
        budget.failed(client)
        raise HTTPException(401, "wrong user name or password")
    return credentials.username


KEY_DESCRIPTION = (
    "A key of the client's choosing (a fresh UUID per request) that makes a retry of this "
    "write safe: the first request with it is done and its answer kept with it, in the "
    "same commit; the same request again with the same key, within [api] idempotency_ttl "
    "seconds, gets that answer again with `Idempotent-Replayed: true` and changes nothing, "
    "whichever node of a pair answers it. The key with another request (method, path, "
    "query or body) is refused with 422. A refused write keeps no key. Keys are per user."
)

R = TypeVar("R")


async def keyed_request(
    request: Request,
    user: Annotated[str, Depends(require_user)],
    key: Annotated[
        str | None,
        # The pattern is declared, and checked by KeyedRequest.of with a 400 that says
        # what a key may hold (FastAPI's own check would answer a bare 422).
        Header(alias=HEADER, description=KEY_DESCRIPTION, json_schema_extra=KEY_PATTERN),
    ] = None,
) -> KeyedRequest | None:
    """The write's Idempotency-Key, with what makes a retry the same request."""
    if key is None:
        return None
    body = await request.body()
    return KeyedRequest.of(user, key, request.method, request.url.path, request.url.query, body)


Keyed = Annotated[KeyedRequest | None, Depends(keyed_request)]


class Writes:
    """The northbound writes of one request, done once per Idempotency-Key when it has
    one."""

    def __init__(self, controller: ControllerDep, keyed: Keyed) -> None:
        self.controller = controller
        self.keyed = keyed

    def answer(
        self, render: Callable[[R], Answer], write: Callable[..., R], *args: Any, **kwargs: Any
    ) -> Response:
        """`write(northbound, *args, **kwargs)` (a Northbound method), answered as `render`
        answers its result; a retry gets that first answer (idempotency.Replayed)."""
        northbound = self.controller.northbound.keyed(self.keyed, render)
        return respond(render(write(northbound, *args, **kwargs)))


KeyedWrites = Annotated[Writes, Depends()]
