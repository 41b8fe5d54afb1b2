"""VIM connections: the node's own [vim] and those added with POST /v0/vims; orphans."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from esc.api.deps import ControllerDep, ReadSession, require_user
from esc.api.schemas import OrphansView, OrphanView, VimIn, VimView
from esc.db.models import Deployment, VimConnection
from esc.descriptor import Name
from esc.engine.controller import Controller
from esc.engine.orphans import find_orphans
from esc.engine.vims import DEFAULT, connection_name, driver_section
from esc.errors import NotFound
from esc.health import check_vim
from esc.vim.base import VimError

router = APIRouter(tags=["vims"], dependencies=[Depends(require_user)])


def _users(session: Session, name: str) -> int:
    where = Deployment.vim.is_(None) if connection_name(name) is None else Deployment.vim == name
    return session.scalar(select(func.count()).select_from(Deployment).where(where)) or 0


def _views(session: Session, controller: Controller) -> list[VimView]:
    own = controller.settings.vim
    views = [
        VimView(
            name=DEFAULT,
            driver=own.driver,
            source="esc.toml",
            settings=driver_section(own),
            deployments=_users(session, DEFAULT),
        )
    ]
    for row in session.scalars(select(VimConnection).order_by(VimConnection.name)):
        views.append(
            VimView(
                name=row.name,
                driver=row.driver,
                source="database",
                settings=row.settings.get(row.driver, row.settings),
                deployments=_users(session, row.name),
            )
        )
    return views


@router.get("/v0/vims", response_model=list[VimView])
def list_vims(session: ReadSession, controller: ControllerDep) -> list[VimView]:
    return _views(session, controller)


@router.get("/v0/vims/orphans", response_model=OrphansView)
def list_orphans(controller: ControllerDep) -> OrphansView:
    orphans, unreachable = find_orphans(controller.db, controller.vims)
    return OrphansView(
        orphans=[
            OrphanView(vim=o.vim, vm_id=o.vm_id, state=o.state, detail=o.detail) for o in orphans
        ],
        unreachable=unreachable,
    )


@router.get("/v0/vims/{name}", response_model=VimView)
def show_vim(name: Name, session: ReadSession, controller: ControllerDep) -> VimView:
    view = next((v for v in _views(session, controller) if v.name == name), None)
    if view is None:
        raise NotFound(f"no VIM connection {name!r}: see escadm vim list")
    try:
        result = check_vim(controller.vims.get(name))
    except VimError as exc:
        view.usable, view.detail = False, str(exc)
    else:
        view.usable, view.detail = result.ok, result.detail
    return view


@router.post("/v0/vims", response_model=VimView, status_code=201)
def add_vim(body: VimIn, controller: ControllerDep) -> VimView:
    controller.northbound.add_vim(body.name, body.driver, body.settings)
    with controller.db.read() as session:
        return next(v for v in _views(session, controller) if v.name == body.name)


@router.delete("/v0/vims/{name}", status_code=204)
def remove_vim(name: Name, controller: ControllerDep) -> Response:
    controller.northbound.remove_vim(name)
    return Response(status_code=204)


@router.delete("/v0/vims/{name}/orphans/{vm_id}", status_code=204)
def delete_orphan(name: Name, vm_id: str, controller: ControllerDep) -> Response:
    controller.northbound.delete_orphan(name, vm_id)
    return Response(status_code=204)
