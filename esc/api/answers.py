"""A write's answer as the API sends it: the first time, and again to a retry that
carries the same Idempotency-Key (esc.engine.idempotency keeps it with the write)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from esc.engine.idempotency import REPLAYED_HEADER, Answer


def respond(answer: Answer, *, replayed: bool = False) -> Response:
    headers = dict(answer.headers)
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


def rendered(status: int, view: Callable[[Any], BaseModel]) -> Callable[[Any], Answer]:
    """Answer a write's result with `status` and `view` of it as JSON."""

    def render(result: Any) -> Answer:
        return Answer(status, view(result).model_dump(mode="json"))

    return render


def no_content(_result: object) -> Answer:
    return Answer(204, None)
