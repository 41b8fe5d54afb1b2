"""Health and version: unauthenticated health so load balancers and HA can probe it."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from esc.api.deps import ControllerDep, require_user
from esc.api.schemas import Health, VersionView
from esc.descriptor import DATA_MODEL_VERSION
from esc.engine.controller import STAGE_READY
from esc.version import CURRENT

router = APIRouter(prefix="/esc", tags=["system"])


@router.get("/health", response_model=Health)
def health(controller: ControllerDep) -> JSONResponse:
    if controller.stage == STAGE_READY:
        body = Health(status_code=2000, message="ESC services are running", stage=STAGE_READY)
        return JSONResponse(body.model_dump(), status_code=200)
    body = Health(status_code=5000, message="ESC is starting or stopping", stage=controller.stage)
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/version", response_model=VersionView, dependencies=[Depends(require_user)])
def version() -> VersionView:
    return VersionView(
        version=CURRENT.version,
        release=str(CURRENT.build),
        full=str(CURRENT),
        data_model_version=DATA_MODEL_VERSION,
    )
