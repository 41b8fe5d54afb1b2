"""Events for every state change, and their outbox rows.

An event and one delivery row per matching subscription are written in the
same database transaction as the state change they describe, so a change
is never visible without its event, and no event is lost to a crash
between "changed" and "notified" (the transactional outbox pattern).
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from esc.db.models import (
    Delivery,
    DeliveryState,
    Deployment,
    Event,
    Severity,
    Subscription,
    Vm,
)

SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
# Events that mean ESC has stopped trying: a person must act.
CRITICAL_TYPES = frozenset({"VM_MANUAL_RECOVERY_NEEDED"})


def severity_of(type_: str, status: str) -> Severity:
    if type_ in CRITICAL_TYPES:
        return Severity.CRITICAL
    return Severity.ERROR if status == FAILURE else Severity.INFO


# Set after a commit that added deliveries, so the notifier wakes at once
# instead of at its next poll.
outbox_changed = threading.Event()


def ordering_key(tenant: str, deployment_name: str) -> str:
    """Deliveries are in order per deployment; a redeploy keeps the same order."""
    return f"{tenant}/{deployment_name}"


def emit(
    session: Session,
    type_: str,
    message: str,
    *,
    tenant: str,
    deployment_name: str,
    deployment_id: str | None = None,
    transaction_id: str | None = None,
    vm: Vm | None = None,
    status: str = SUCCESS,
) -> Event:
    event = Event(
        type=type_,
        status=status,
        severity=severity_of(type_, status),
        message=message,
        tenant=tenant,
        deployment_name=deployment_name,
        deployment_id=deployment_id,
        transaction_id=transaction_id,
        vm_id=vm.id if vm else None,
        vm_name=vm.name if vm else None,
    )
    session.add(event)
    session.flush()  # assigns event.id, which the deliveries reference
    subscriptions = session.scalars(
        select(Subscription.id).where(
            or_(Subscription.tenant.is_(None), Subscription.tenant == tenant)
        )
    ).all()
    key = ordering_key(tenant, deployment_name)
    for subscription_id in subscriptions:
        session.add(
            Delivery(
                subscription_id=subscription_id,
                event_id=event.id,
                ordering_key=key,
                state=DeliveryState.PENDING,
            )
        )
    if subscriptions:
        outbox_changed.set()
    return event


def emit_for(
    session: Session,
    deployment: Deployment,
    type_: str,
    message: str,
    *,
    transaction_id: str | None,
    vm: Vm | None = None,
    status: str = SUCCESS,
) -> Event:
    """emit() for an event about a deployment (or one of its VMs)."""
    return emit(
        session,
        type_,
        message,
        tenant=deployment.tenant.name,
        deployment_name=deployment.name,
        deployment_id=deployment.id,
        transaction_id=transaction_id,
        vm=vm,
        status=status,
    )


def event_payload(event: Event) -> dict[str, Any]:
    """The JSON body of a notification and of GET /v0/events."""
    return {
        "event_id": event.id,
        "type": event.type,
        "status": event.status,
        "severity": event.severity.value,
        "message": event.message,
        "tenant": event.tenant,
        "deployment": event.deployment_name,
        "deployment_id": event.deployment_id,
        "transaction_id": event.transaction_id,
        "vm_id": event.vm_id,
        "vm_name": event.vm_name,
        "time": event.created_at.isoformat(),
    }
