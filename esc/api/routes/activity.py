"""Transactions, events and event subscriptions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import and_, or_, select

from esc.api.answers import no_content, rendered
from esc.api.deps import KeyedWrites, ReadSession, require_user
from esc.api.pages import (
    NEXT_LINK_HEADER,
    IdCursor,
    Limit,
    TimeCursor,
    link_next,
    read_time_cursor,
    time_cursor,
)
from esc.api.schemas import EventView, SubscriptionIn, SubscriptionView, TransactionView
from esc.db.models import Event, Severity, Subscription, Transaction, TransactionState
from esc.engine.events import event_payload
from esc.engine.idempotency import Answer
from esc.engine.northbound import Northbound
from esc.errors import NotFound
from esc.monitor.mappings import mappings_in_force, render_mappings

router = APIRouter(prefix="/v0", tags=["activity"], dependencies=[Depends(require_user)])

_PAGED = {200: {"headers": NEXT_LINK_HEADER}}


@router.get("/transactions", response_model=list[TransactionView], responses=_PAGED)
def list_transactions(
    request: Request,
    response: Response,
    session: ReadSession,
    state: TransactionState | None = None,
    in_progress: bool = False,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    limit: Limit = 100,
    cursor: TimeCursor = None,
) -> list[TransactionView]:
    """Newest first, `limit` per page; the `Link` header leads to the next page."""
    query = (
        select(Transaction)
        .order_by(Transaction.created_at.desc(), Transaction.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        at, last_id = read_time_cursor(cursor)
        query = query.where(
            or_(
                Transaction.created_at < at,
                and_(Transaction.created_at == at, Transaction.id < last_id),
            )
        )
    if state is not None:
        query = query.where(Transaction.state == state)
    if in_progress:
        query = query.where(Transaction.lock_key.is_not(None))
    if tenant is not None:
        query = query.where(Transaction.tenant == tenant)
    if deployment is not None:
        query = query.where(Transaction.deployment_name == deployment)
    rows = list(session.scalars(query))
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        link_next(request, response, time_cursor(last.created_at, last.id))
    return [TransactionView.of(tx) for tx in rows]


@router.get("/transactions/{tx_id}", response_model=TransactionView)
def show_transaction(tx_id: str, session: ReadSession) -> TransactionView:
    tx = session.get(Transaction, tx_id)
    if tx is None:
        raise NotFound(f"no transaction {tx_id}")
    return TransactionView.of(tx)


@router.get("/events", response_model=list[EventView], responses=_PAGED)
def list_events(
    request: Request,
    response: Response,
    session: ReadSession,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only events with a larger event_id")
    ] = 0,
    tenant: Annotated[str | None, Query(max_length=128)] = None,
    deployment: Annotated[str | None, Query(max_length=128)] = None,
    transaction_id: Annotated[str | None, Query(max_length=36)] = None,
    severity: Severity | None = None,
    limit: Limit = 100,
    cursor: IdCursor = None,
) -> list[dict]:
    """Oldest first, `limit` per page; the `Link` header leads to the next page."""
    if cursor is not None:
        after = max(after, cursor)
    query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit + 1)
    if severity is not None:
        query = query.where(Event.severity == severity)
    if tenant is not None:
        query = query.where(Event.tenant == tenant)
    if deployment is not None:
        query = query.where(Event.deployment_name == deployment)
    if transaction_id is not None:
        query = query.where(Event.transaction_id == transaction_id)
    rows = list(session.scalars(query))
    if len(rows) > limit:
        rows = rows[:limit]
        link_next(request, response, rows[-1].id)
    return [event_payload(e) for e in rows]


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
def create_subscription(body: SubscriptionIn, writes: KeyedWrites) -> Response:
    return writes.answer(
        rendered(201, _subscription_view),
        Northbound.subscribe,
        str(body.callback_url),
        body.tenant,
        body.ca_bundle,
    )


@router.delete("/subscriptions/{sub_id}", status_code=204)
def delete_subscription(sub_id: str, writes: KeyedWrites) -> Response:
    return writes.answer(no_content, Northbound.unsubscribe, sub_id)


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
async def import_dynamic_mappings(request: Request, writes: KeyedWrites) -> Response:
    document = await request.body()
    # The write may wait for the database's lock: never on the event loop.
    return await run_in_threadpool(
        writes.answer, _mappings_imported, Northbound.import_mappings, document
    )


def _mappings_imported(counts: dict[str, int]) -> Answer:
    return Answer(200, counts)
