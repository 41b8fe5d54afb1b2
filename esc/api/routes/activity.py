"""Transactions, events and event subscriptions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from esc.api.deps import ControllerDep, ReadSession, require_user
from esc.api.schemas import EventView, SubscriptionIn, SubscriptionView, TransactionView
from esc.db.models import Event, Severity, Subscription, Transaction, TransactionState
from esc.engine.events import event_payload
from esc.errors import NotFound
from esc.monitor.mappings import mappings_in_force, render_mappings

router = APIRouter(prefix="/v0", tags=["activity"], dependencies=[Depends(require_user)])

Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("/transactions", response_model=list[TransactionView])
def list_transactions(
    session: ReadSession,
    state: TransactionState | None = None,
    in_progress: bool = False,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 100,
) -> list[TransactionView]:
    query = select(Transaction).order_by(Transaction.created_at.desc()).limit(limit)
    if state is not None:
        query = query.where(Transaction.state == state)
    if in_progress:
        query = query.where(Transaction.lock_key.is_not(None))
    if tenant is not None:
        query = query.where(Transaction.tenant == tenant)
    if deployment is not None:
        query = query.where(Transaction.deployment_name == deployment)
    return [TransactionView.of(tx) for tx in session.scalars(query)]


@router.get("/transactions/{tx_id}", response_model=TransactionView)
def show_transaction(tx_id: str, session: ReadSession) -> TransactionView:
    tx = session.get(Transaction, tx_id)
    if tx is None:
        raise NotFound(f"no transaction {tx_id}")
    return TransactionView.of(tx)


@router.get("/events", response_model=list[EventView])
def list_events(
    session: ReadSession,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only events with a larger event_id")
    ] = 0,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    transaction_id: Annotated[str | None, Query(max_length=36)] = None,
    severity: Severity | None = None,
    limit: Limit = 100,
) -> list[dict]:
    query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
    if severity is not None:
        query = query.where(Event.severity == severity)
    if tenant is not None:
        query = query.where(Event.tenant == tenant)
    if deployment is not None:
        query = query.where(Event.deployment_name == deployment)
    if transaction_id is not None:
        query = query.where(Event.transaction_id == transaction_id)
    return [event_payload(e) for e in session.scalars(query)]


def _subscription_view(sub: Subscription) -> SubscriptionView:
    return SubscriptionView(
        id=sub.id,
        callback_url=sub.callback_url,
        tenant=sub.tenant,
        ca_bundle=sub.ca_bundle,
        created_at=sub.created_at,
    )


@router.get("/subscriptions", response_model=list[SubscriptionView])
def list_subscriptions(session: ReadSession) -> list[SubscriptionView]:
    subs = session.scalars(select(Subscription).order_by(Subscription.created_at))
    return [_subscription_view(s) for s in subs]


@router.post("/subscriptions", response_model=SubscriptionView, status_code=201)
def create_subscription(body: SubscriptionIn, controller: ControllerDep) -> SubscriptionView:
    return _subscription_view(
        controller.northbound.subscribe(str(body.callback_url), body.tenant, body.ca_bundle)
    )


@router.delete("/subscriptions/{sub_id}", status_code=204)
def delete_subscription(sub_id: str, controller: ControllerDep) -> Response:
    controller.northbound.unsubscribe(sub_id)
    return Response(status_code=204)


XML = "application/xml"


@router.get("/dynamic_mappings", response_class=Response, responses={200: {"content": {XML: {}}}})
def export_dynamic_mappings(session: ReadSession) -> Response:
    return Response(render_mappings(mappings_in_force(session)), media_type=XML)


@router.put(
    "/dynamic_mappings",
    openapi_extra={
        "requestBody": {"required": True, "content": {XML: {"schema": {"type": "string"}}}}
    },
)
async def import_dynamic_mappings(request: Request, controller: ControllerDep) -> dict:
    document = await request.body()
    # The write may wait for the database's lock: never on the event loop.
    return await run_in_threadpool(controller.northbound.import_mappings, document)
