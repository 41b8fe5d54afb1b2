"""Monitoring (MONA) on and off, and the custom scripts its rules run."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from esc.api.answers import no_content, rendered
from esc.api.deps import ControllerDep, KeyedWrites, ReadSession, require_user
from esc.api.schemas import (
    MonaService,
    MonitoringView,
    MonitorModeIn,
    ScriptIn,
    ScriptName,
    ScriptView,
)
from esc.db.models import CustomScript
from esc.engine import op_mode
from esc.engine.controller import Controller
from esc.engine.northbound import Northbound
from esc.monitor import mode, scripts
from esc.monitor.mona import read_status
from esc.node.processes import live_record

router = APIRouter(tags=["monitoring"], dependencies=[Depends(require_user)])


def _monitoring(controller: Controller, mode_now: mode.MonitorMode) -> MonitoringView:
    with controller.db.read() as session:
        op = op_mode.current(session)
    record = live_record(controller.home.run, "mona")
    # A report older than a few refreshes is from a MONA that is gone.
    stale_after = 3 * controller.settings.monitor.refresh_interval + 2
    return MonitoringView(
        mode=mode_now,
        op_mode=op,
        service=MonaService(
            running=record is not None,
            pid=record.pid if record else None,
            pgid=record.pgid if record else None,
        ),
        status=read_status(controller.home.run, stale_after) if record else None,
    )


@router.get("/esc/monitoring", response_model=MonitoringView)
def get_monitoring(session: ReadSession, controller: ControllerDep) -> MonitoringView:
    return _monitoring(controller, mode.current(session))


@router.put("/esc/monitoring", response_model=MonitoringView)
def set_monitoring(body: MonitorModeIn, writes: KeyedWrites) -> Response:
    def view(mode_now: mode.MonitorMode) -> MonitoringView:
        return _monitoring(writes.controller, mode_now)

    return writes.answer(rendered(200, view), Northbound.set_monitoring, body.mode)


def _view(row: CustomScript, *, content: bool) -> ScriptView:
    return ScriptView(
        name=row.name,
        timeout=row.timeout,
        size=len(row.content.encode()),
        updated_at=row.updated_at,
        content=row.content if content else None,
    )


@router.get("/v0/scripts", response_model=list[ScriptView])
def list_scripts(session: ReadSession) -> list[ScriptView]:
    return [_view(row, content=False) for row in scripts.list_scripts(session)]


@router.get("/v0/scripts/{name}", response_model=ScriptView)
def show_script(name: ScriptName, session: ReadSession) -> ScriptView:
    return _view(scripts.get_script(session, name), content=True)


@router.put("/v0/scripts/{name}", response_model=ScriptView)
def put_script(name: ScriptName, body: ScriptIn, writes: KeyedWrites) -> Response:
    def view(row: CustomScript) -> ScriptView:
        return _view(row, content=False)

    return writes.answer(
        rendered(200, view), Northbound.put_script, name, body.content, body.timeout
    )


@router.delete("/v0/scripts/{name}", status_code=204)
def delete_script(name: ScriptName, writes: KeyedWrites) -> Response:
    return writes.answer(no_content, Northbound.delete_script, name)
