"""Tenants, deployments (deploy, list, show, update, scale, undeploy) and VM actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import contains_eager

from esc.api.answers import no_content, rendered
from esc.api.deps import KeyedWrites, ReadSession, require_user
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


def tenant_view(tenant: Tenant) -> TenantView:
    return TenantView(id=tenant.id, name=tenant.name, created_at=tenant.created_at)


tenant_created = rendered(201, tenant_view)


async def _descriptor(request: Request) -> Descriptor:
    return parse_descriptor(await request.body(), request.headers.get("content-type", ""))


# tenants --------------------------------------------------------------------------


@router.get("/tenants", response_model=list[TenantView])
def list_tenants(session: ReadSession) -> list[TenantView]:
    tenants = session.scalars(select(Tenant).order_by(Tenant.name))
    return [tenant_view(t) for t in tenants]


@router.post("/tenants", response_model=TenantView, status_code=201)
def create_tenant(body: TenantIn, writes: KeyedWrites) -> Response:
    return writes.answer(tenant_created, Northbound.create_tenant, body.name)


@router.delete("/tenants/{tenant}", status_code=204)
def delete_tenant(tenant: str, writes: KeyedWrites) -> Response:
    return writes.answer(no_content, Northbound.delete_tenant, tenant)


# deployments --------------------------------------------------------------------


@router.post(
    "/deployments", response_model=Accepted, status_code=202, openapi_extra=_DESCRIPTOR_BODY
)
async def deploy(request: Request, writes: KeyedWrites) -> Response:
    descriptor = await _descriptor(request)
    # The write may wait for the database's lock: never on the event loop.
    return await run_in_threadpool(writes.answer, accepted, Northbound.deploy, descriptor)


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
    tenant: str, name: str, request: Request, writes: KeyedWrites
) -> Response:
    descriptor = await _descriptor(request)
    return await run_in_threadpool(
        writes.answer, accepted, Northbound.update, tenant, name, descriptor
    )


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
    writes: KeyedWrites,
) -> Response:
    return writes.answer(accepted, Northbound.scale, tenant, name, vm_group, body.count)


@router.delete("/tenants/{tenant}/deployments/{name}", response_model=Accepted, status_code=202)
def undeploy(tenant: str, name: str, writes: KeyedWrites) -> Response:
    return writes.answer(accepted, Northbound.undeploy, tenant, name)


@router.post("/vms/{vm_id}/actions", response_model=Accepted, status_code=202)
def vm_action(vm_id: str, body: VmActionIn, writes: KeyedWrites) -> Response:
    return writes.answer(accepted, Northbound.vm_action, vm_id, body.action)
