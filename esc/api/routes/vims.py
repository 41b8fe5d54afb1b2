"""VIM connections: the node's own [vim] and those added with POST /v0/vims; orphans."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from esc.api.answers import no_content, rendered
from esc.api.deps import ControllerDep, KeyedWrites, ReadSession, require_user
from esc.api.schemas import OrphansView, OrphanView, VimIn, VimView
from esc.db.models import Deployment, VimConnection
from esc.descriptor import Name
from esc.engine.controller import Controller
from esc.engine.northbound import Northbound
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
        views.append(_connection_view(row, _users(session, row.name)))
    return views


def _connection_view(row: VimConnection, deployments: int) -> VimView:
    return VimView(
        name=row.name,
        driver=row.driver,
        source="database",
        settings=row.settings.get(row.driver, row.settings),
        deployments=deployments,
    )


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


# A new connection has no deployment yet: removing one is refused while any uses it.
_added = rendered(201, lambda row: _connection_view(row, deployments=0))


@router.post("/v0/vims", response_model=VimView, status_code=201)
def add_vim(body: VimIn, writes: KeyedWrites) -> Response:
    return writes.answer(_added, Northbound.add_vim, body.name, body.driver, body.settings)


@router.delete("/v0/vims/{name}", status_code=204)
def remove_vim(name: Name, writes: KeyedWrites) -> Response:
    return writes.answer(no_content, Northbound.remove_vim, name)


@router.delete("/v0/vims/{name}/orphans/{vm_id}", status_code=204)
def delete_orphan(name: Name, vm_id: str, writes: KeyedWrites) -> Response:
    return writes.answer(no_content, Northbound.delete_orphan, name, vm_id)
