"""Health and version: unauthenticated health so load balancers and HA can probe it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from esc.api.answers import rendered
from esc.api.deps import ControllerDep, KeyedWrites, ReadSession, require_user
from esc.api.schemas import Health, OpModeIn, OpModeView, VersionView
from esc.descriptor import DATA_MODEL_VERSION
from esc.engine import op_mode
from esc.engine.controller import STAGE_READY, Controller
from esc.engine.northbound import Northbound
from esc.version import CURRENT

router = APIRouter(prefix="/esc", tags=["system"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Starting, stopping, or a check failed"}},
)
def health(controller: ControllerDep) -> JSONResponse:
    """Unauthenticated: load balancers and the HA pair probe it."""
    ready, checks = controller.health()
    body = Health(
        status_code=2000 if ready else 5000,
        message="ESC services are running" if ready else _failure_message(controller, checks),
        stage=controller.stage,
        checks=[c.as_dict() for c in checks],
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _failure_message(controller: Controller, checks: list) -> str:
    if controller.stage != STAGE_READY:
        return "ESC is starting or stopping"
    return "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)


@router.get("/op_mode", response_model=OpModeView, dependencies=[Depends(require_user)])
def get_op_mode(session: ReadSession) -> OpModeView:
    return OpModeView(mode=op_mode.current(session))


@router.put("/op_mode", response_model=OpModeView, dependencies=[Depends(require_user)])
def set_op_mode(body: OpModeIn, writes: KeyedWrites) -> Response:
    return writes.answer(_op_mode_set, Northbound.set_op_mode, body.mode, ipt_check=body.ipt_check)


_op_mode_set = rendered(200, lambda mode: OpModeView(mode=mode))


@router.get("/version", response_model=VersionView, dependencies=[Depends(require_user)])
def version() -> VersionView:
    return VersionView(
        version=CURRENT.version,
        release=str(CURRENT.build),
        full=str(CURRENT),
        data_model_version=DATA_MODEL_VERSION,
    )
