"""The pgsql service of an HA node: decide how this node's PostgreSQL starts, get its
data ready for that, then exec the server in place (the supervisor's child is the
postmaster itself, and its stop signal reaches it).

    python -m esc.ha.pgsql_service --home H      (run by the node's supervisor)

How it starts, from the data and the role record (run/ha-role.json):
- no data yet (the pair's second node, or a node redeployed): cloned from the peer,
  retried until the peer answers; then a standby;
- role ACTIVE: the primary;
- otherwise a standby. A data directory that last ran as a primary is first made
  to follow the peer when the record names the peer as the active node (rewind, or
  a re-clone when rewind is impossible); while no active peer is known it stands by
  as it is, so that nothing it holds is lost if it is the one promoted.

A role record written before the host booted says nothing about now (the node may
have been replaced as the active one since): it counts as none.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from esc.config import ConfigError, NodeHome
from esc.ha.pgsql import Cluster, PgsqlError
from esc.ha.replication import PEER_PRIMARY, peer_state
from esc.ha.role_record import ACTIVE, RoleRecord, RoleRecordError, read_role
from esc.ha.role_record import STANDBY as STANDBY_ROLE

log = logging.getLogger("esc.ha.pgsql_service")

CLONE = "clone"
PRIMARY = "primary"
STANDBY = "standby"
FOLLOW = "follow"
HOLD = "hold"
# Between attempts to reach a peer that does not answer (yet): doubling, bounded, so
# the node is back in the pair within seconds of its peer.
RETRY_FIRST = 1.0
RETRY_MAX = 5.0
# Set while a former primary stands by without having followed: the next start that
# knows the active peer rewinds it (standby.signal alone would hide that it diverged).
UNFOLLOWED_MARKER = "pgsql.unfollowed"


@dataclass(frozen=True)
class StartPlan:
    action: str  # CLONE, PRIMARY, STANDBY, FOLLOW or HOLD
    reason: str

    @property
    def as_standby(self) -> bool:
        return self.action != PRIMARY


def current_role(home: NodeHome, booted_at: float | None = None) -> RoleRecord | None:
    """The role record if it was written since the host booted, else None."""
    try:
        record = read_role(home)
    except RoleRecordError as exc:
        log.error("%s", exc)
        return None
    if record is None:
        return None
    boot = psutil.boot_time() if booted_at is None else booted_at
    if datetime.fromisoformat(record.since).timestamp() < boot:
        log.warning(
            "the role record (%s since %s) predates this boot: ignored", record.role, record.since
        )
        return None
    return record


def unfollowed_marker(cluster: Cluster) -> Path:
    return cluster.home.data / UNFOLLOWED_MARKER


def plan_start(cluster: Cluster, record: RoleRecord | None) -> StartPlan:
    peer = cluster.peer.host
    if not cluster.is_initialised():
        return StartPlan(CLONE, f"this node has no data yet: cloned from the peer {peer}")
    if record is not None and record.role == ACTIVE:
        return StartPlan(PRIMARY, f"the role record says ACTIVE ({record.reason})")
    was_primary = cluster.was_primary() or unfollowed_marker(cluster).exists()
    if not was_primary:
        return StartPlan(STANDBY, f"a standby of {peer}")
    if record is not None and record.active == peer:
        return StartPlan(
            FOLLOW, f"its data last ran as a primary and {peer} is the active node: it follows"
        )
    return StartPlan(
        HOLD,
        f"its data last ran as a primary and no active peer is known: it stands by for {peer} "
        "as it is (nothing rewound)",
    )


def _until_done(what: str, attempt, stop_after: float | None = None):
    """attempt() until it succeeds; a PgsqlError (the peer does not answer yet) is
    logged and retried after a bounded, doubling delay."""
    delay = RETRY_FIRST
    deadline = None if stop_after is None else time.monotonic() + stop_after
    while True:
        try:
            return attempt()
        except PgsqlError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            log.warning("%s failed (retried in %.0f s): %s", what, delay, exc)
            time.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)


def _primary(cluster: Cluster):
    def answers_as_primary() -> None:
        if not cluster.peer_is_primary():
            raise PgsqlError(f"{cluster.peer} answers, but as a standby, not as the primary")

    return answers_as_primary


def prepare_data(cluster: Cluster, plan: StartPlan, *, stop_after: float | None = None) -> None:
    """Get the data directory ready to start as `plan` says (leaves the server stopped)."""
    cluster.prepare()
    marker = unfollowed_marker(cluster)
    if plan.action == CLONE:
        seconds = _until_done(f"cloning from {cluster.peer}", cluster.clone_from, stop_after)
        log.info("cloned from %s in %.1f s", cluster.peer, seconds)
    elif plan.action == FOLLOW:
        # Its primary first: follow() counts a peer that does not answer yet (one just
        # restarted as the primary) as "rewind impossible" and clones the whole
        # database instead.
        _until_done(f"waiting for the primary {cluster.peer}", _primary(cluster), stop_after)
        result = _until_done(f"following {cluster.peer}", cluster.follow, stop_after)
        marker.unlink(missing_ok=True)
        log.info(
            "following %s by %s in %.1f s%s",
            cluster.peer,
            result.method,
            result.seconds,
            f" ({result.rewind_error})" if result.rewind_error else "",
        )
    elif plan.action == HOLD:
        cluster.stand_by_for()
        marker.write_text("this former primary stands by without having followed its peer\n")
    cluster.configure_role(as_standby=plan.as_standby)


def _checked_against_peer(cluster: Cluster, record: RoleRecord | None) -> RoleRecord | None:
    """A record saying ACTIVE may be older than a failover this node did not see (it
    was down meanwhile): when the peer's PostgreSQL answers as the primary, the peer is
    the active one and this node follows it."""
    if record is None or record.role != ACTIVE:
        return record
    if peer_state(cluster, timeout=1.0) != PEER_PRIMARY:
        return record
    log.warning("the role record says ACTIVE but the peer %s is the primary", cluster.peer.host)
    return RoleRecord.now(
        STANDBY_ROLE, "the peer became the active meanwhile", peer=record.peer, active=record.peer
    )


def _stop_helpers(signum: int, _frame: object) -> None:
    """Stopped while cloning or rewinding: the helper programs (pg_basebackup,
    pg_rewind, under runuser) are in this process group; end them with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.killpg(os.getpgid(0), signal.SIGTERM)
    raise SystemExit(128 + signum)


def main() -> int:
    from esc.node.logs import service_home

    home = service_home("pgsql", "ESC HA node: the node's PostgreSQL", tagged=False)
    try:
        settings = home.load()
        cluster = Cluster(home, settings.ha)
    except (ConfigError, PgsqlError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    signal.signal(signal.SIGTERM, _stop_helpers)
    signal.signal(signal.SIGINT, _stop_helpers)
    plan = plan_start(cluster, _checked_against_peer(cluster, current_role(home)))
    log.info(
        "PostgreSQL starts as %s: %s", "standby" if plan.as_standby else "primary", plan.reason
    )
    try:
        prepare_data(cluster, plan)
    except PgsqlError as exc:
        log.error("cannot start: %s", exc)
        return 1
    argv = cluster.command()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    logging.shutdown()
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
