"""Tenants, deployments (deploy, list, show, update, scale, undeploy) and VM actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import contains_eager

from esc.api.deps import ControllerDep, Keyed, ReadSession, require_user
from esc.api.schemas import (
    Accepted,
    DeploymentSummary,
    DeploymentView,
    ScaleIn,
    TenantIn,
    TenantView,
    VmActionIn,
)
from esc.db.models import Deployment, Tenant, Transaction
from esc.descriptor import Descriptor, parse_descriptor
from esc.engine.idempotency import Answer
from esc.engine.northbound import Northbound
from esc.engine.submit import WITH_GROUPS_AND_VMS, find_deployment

router = APIRouter(prefix="/v0", tags=["deployments"], dependencies=[Depends(require_user)])

_DESCRIPTOR_BODY = {
    "requestBody": {
        "required": True,
        "description": "A deployment descriptor, YAML or JSON (see examples/deployment.yaml).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Descriptor"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/Descriptor"}},
        },
    }
}


def accepted(tx: Transaction) -> Answer:
    href = f"/v0/transactions/{tx.id}"
    view = Accepted(transaction_id=tx.id, operation=tx.operation, state=tx.state, href=href)
    return Answer(202, view.model_dump(mode="json"), {"Location": href})


def tenant_created(tenant: Tenant) -> Answer:
    view = TenantView(id=tenant.id, name=tenant.name, created_at=tenant.created_at)
    return Answer(201, view.model_dump(mode="json"))


def respond(answer: Answer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def submitting(controller: ControllerDep, keyed: Keyed) -> Northbound:
    """The writes of a route that answers with an accepted transaction, done once per
    Idempotency-Key."""
    return controller.northbound.keyed(keyed, accepted)


Submitting = Annotated[Northbound, Depends(submitting)]


async def _descriptor(request: Request) -> Descriptor:
    return parse_descriptor(await request.body(), request.headers.get("content-type", ""))


# tenants --------------------------------------------------------------------------


@router.get("/tenants", response_model=list[TenantView])
def list_tenants(session: ReadSession) -> list[TenantView]:
    tenants = session.scalars(select(Tenant).order_by(Tenant.name))
    return [TenantView(id=t.id, name=t.name, created_at=t.created_at) for t in tenants]


@router.post("/tenants", response_model=TenantView, status_code=201)
def create_tenant(body: TenantIn, controller: ControllerDep, keyed: Keyed) -> JSONResponse:
    northbound = controller.northbound.keyed(keyed, tenant_created)
    return respond(tenant_created(northbound.create_tenant(body.name)))


@router.delete("/tenants/{tenant}", status_code=204)
def delete_tenant(tenant: str, controller: ControllerDep) -> Response:
    controller.northbound.delete_tenant(tenant)
    return Response(status_code=204)


# deployments --------------------------------------------------------------------


@router.post(
    "/deployments", response_model=Accepted, status_code=202, openapi_extra=_DESCRIPTOR_BODY
)
async def deploy(request: Request, northbound: Submitting) -> JSONResponse:
    descriptor = await _descriptor(request)
    # The write may wait for the database's lock: never on the event loop.
    return respond(accepted(await run_in_threadpool(northbound.deploy, descriptor)))


@router.get("/deployments", response_model=list[DeploymentSummary])
def list_deployments(
    session: ReadSession,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    name: Annotated[str | None, Query(max_length=128)] = None,
) -> list[DeploymentSummary]:
    query = (
        select(Deployment)
        .join(Tenant)
        .options(contains_eager(Deployment.tenant), WITH_GROUPS_AND_VMS)
        .order_by(Tenant.name, Deployment.name)
    )
    if tenant is not None:
        query = query.where(Tenant.name == tenant)
    if name is not None:
        query = query.where(Deployment.name == name)
    return [DeploymentSummary.of(d) for d in session.scalars(query)]


@router.get("/tenants/{tenant}/deployments/{name}", response_model=DeploymentView)
def show_deployment(tenant: str, name: str, session: ReadSession) -> DeploymentView:
    return DeploymentView.of(find_deployment(session, tenant, name))


@router.put(
    "/tenants/{tenant}/deployments/{name}",
    response_model=Accepted,
    status_code=202,
    openapi_extra=_DESCRIPTOR_BODY,
)
async def update_deployment(
    tenant: str, name: str, request: Request, northbound: Submitting
) -> JSONResponse:
    descriptor = await _descriptor(request)
    return respond(accepted(await run_in_threadpool(northbound.update, tenant, name, descriptor)))


@router.post(
    "/tenants/{tenant}/deployments/{name}/vm_groups/{vm_group}/scale",
    response_model=Accepted,
    status_code=202,
)
def scale_vm_group(
    tenant: str,
    name: str,
    vm_group: str,
    body: ScaleIn,
    northbound: Submitting,
) -> JSONResponse:
    return respond(accepted(northbound.scale(tenant, name, vm_group, body.count)))


@router.delete("/tenants/{tenant}/deployments/{name}", response_model=Accepted, status_code=202)
def undeploy(tenant: str, name: str, northbound: Submitting) -> JSONResponse:
    return respond(accepted(northbound.undeploy(tenant, name)))


@router.post("/vms/{vm_id}/actions", response_model=Accepted, status_code=202)
def vm_action(vm_id: str, body: VmActionIn, northbound: Submitting) -> JSONResponse:
    return respond(accepted(northbound.vm_action(vm_id, body.action)))
