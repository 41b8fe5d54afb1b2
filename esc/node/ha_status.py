"""`escadm status` of an HA node: its role (from the role record) and whether it can
play it, in ESC's words:

    ESC status=0 ESC HA Active Healthy
    ESC status=0 ESC HA Standby Healthy
    ESC status=1 ESC HA Standby Unhealthy: pgsql is not running
    ESC status=1 ESC HA Fault: <the record's reason>; <what to do>
    ESC status=0 ESC HA is stopped

The first check that fails is named; the checks, in order: a service the supervisor
gave up; a service not running (or keepalived stopped on request); the role record
readable; PostgreSQL answering in the role's shape (the primary on the active node, a
standby streaming from its peer on the standby); the API answering, with the
controller's own checks passing (on a standby, all but those of the active role it
does not hold by design); keepalived's track files (the gateway answers, the node's
health passes), without which the node cannot hold the VIP.
"""

from __future__ import annotations

from dataclasses import dataclass

from esc.config import NodeHome, Settings
from esc.ha.role_record import (
    ACTIVE,
    FAULT,
    STANDBY,
    RoleRecord,
    RoleRecordError,
    read_role,
)
from esc.node.control import STATUS_HEALTHY, STATUS_STOPPED, STATUS_UNHEALTHY, NodeState

# The controller's checks that only the holder of the active role passes.
ACTIVE_ROLE_CHECKS = ("engine", "notifier")


@dataclass(frozen=True)
class HaStatus:
    line: str
    code: int
    role: str | None  # the record's role; None: no record
    healthy: bool
    reason: str | None  # the failed check, or the FAULT's reason
    record: RoleRecord | None


def _words(role: str) -> str:
    return role.capitalize()


def _pgsql_problem(home: NodeHome, settings: Settings, role: str) -> str | None:
    from esc.ha.pgsql import Cluster, PgsqlError
    from esc.ha.replication import PRIMARY, read_status

    try:
        status = read_status(Cluster(home, settings.ha))
    except PgsqlError as exc:
        return f"pgsql does not answer: {exc}"
    if role == ACTIVE and status.role != PRIMARY:
        return "pgsql runs as a standby, not as the primary the active node needs"
    if role == STANDBY and status.role == PRIMARY:
        return "pgsql runs as a primary on the standby node: it must follow the active node"
    if role == STANDBY and not status.connected:
        return (
            f"pgsql does not stream from the active node {status.peer.address} "
            "(connection:Connecting): see log/pgsql.out"
        )
    return None


def _api_problem(state: NodeState, settings: Settings, role: str) -> str | None:
    if state.api_problem:
        return f"api: {state.api_problem}"
    if state.api_status is None:
        return f"api does not answer on port {settings.api.port}: see log/escmanager.log"
    failed = [
        c
        for c in state.api_checks or []
        if not c.get("ok") and not (role != ACTIVE and c.get("name") in ACTIVE_ROLE_CHECKS)
    ]
    if failed:
        return "api: " + "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in failed)
    if role == ACTIVE and state.api_status != 200:
        return f"api: GET /esc/health answers {state.api_status}"
    return None


def _track_problem(home: NodeHome, settings: Settings) -> str | None:
    """keepalived's view: a fault in a track file keeps (or puts) the node in FAULT, so
    it cannot hold the VIP."""
    from esc.ha.keepalived import KeepalivedPaths, TrackFile

    paths = KeepalivedPaths.under(home.run)
    if not TrackFile(paths.gateway_file).healthy():
        return (
            f"the gateway {settings.ha.gateway_ip} does not answer (run/ha-gateway.track): "
            "keepalived holds no VIP here until it does; see log/gateway-watch.out"
        )
    if not TrackFile(paths.health_file).healthy():
        return "the node's health check fails (run/ha-health.track): see log/supervisor.log"
    return None


def _service_problem(state: NodeState) -> str | None:
    for service in state.services:
        if service.given_up:
            return service.given_up.describe()
    for service in state.services:
        if service.held:
            return f"{service.name} is stopped on request (escadm {service.name} start)"
        if not service.running:
            return f"{service.name} is not running"
    return None


def ha_status(home: NodeHome, settings: Settings, state: NodeState) -> HaStatus:
    if not state.running:
        return HaStatus("ESC status=0 ESC HA is stopped", STATUS_STOPPED, None, False, None, None)
    try:
        record = read_role(home)
    except RoleRecordError as exc:
        why = str(exc)
        return HaStatus(
            f"ESC status=1 ESC HA Unhealthy: {why}", STATUS_UNHEALTHY, None, False, why, None
        )
    if record is not None and record.role == FAULT:
        why = (
            f"{record.reason} (since {record.since}); this node takes no role until the "
            "cause is gone: see escadm health and log/, then escadm restart"
        )
        return HaStatus(
            f"ESC status=1 ESC HA Fault: {why}", STATUS_UNHEALTHY, FAULT, False, why, record
        )
    role = record.role if record is not None else None
    problem = _service_problem(state)
    if role not in (ACTIVE, STANDBY):
        why = problem or (
            f"its role is not decided yet ({record.reason})"
            if record is not None
            else "its role is not decided yet (no role record: keepalived has not reported a state)"
        )
        return HaStatus(
            f"ESC status=1 ESC HA Starting: {why}", STATUS_UNHEALTHY, role, False, why, record
        )
    problem = (
        problem
        or _pgsql_problem(home, settings, role)
        or _api_problem(state, settings, role)
        or _track_problem(home, settings)
    )
    if problem:
        return HaStatus(
            f"ESC status=1 ESC HA {_words(role)} Unhealthy: {problem}",
            STATUS_UNHEALTHY,
            role,
            False,
            problem,
            record,
        )
    return HaStatus(
        f"ESC status=0 ESC HA {_words(role)} Healthy", STATUS_HEALTHY, role, True, None, record
    )
