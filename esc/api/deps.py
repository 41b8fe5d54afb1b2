"""Typed dependencies of the routes: the controller, a DB session, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy.orm import Session

from esc.engine.controller import Controller
from esc.engine.idempotency import HEADER, KeyedRequest
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


async def keyed_request(
    request: Request, user: Annotated[str, Depends(require_user)]
) -> KeyedRequest | None:
    """The write's Idempotency-Key, with what makes a retry the same request."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    body = await request.body()
    return KeyedRequest.of(user, key, request.method, request.url.path, request.url.query, body)


Keyed = Annotated[KeyedRequest | None, Depends(keyed_request)]
