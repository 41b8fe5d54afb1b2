"""The pair's replication state, read from PostgreSQL's own views and told in the
words of DRBD's `drbdadm status`, which ESC's operators know:

    esc role:Primary
      disk:UpToDate
      198.18.0.12 role:Secondary
        peer-disk:UpToDate

`esc` is the replicated resource (the node's database); the indented address is
the peer, the pair's other node.

How PostgreSQL's state maps to DRBD's words, exactly:

- `role`: `Primary` when `pg_is_in_recovery()` is false, else `Secondary`.
- The peer line: `<peer> role:Secondary` / `role:Primary` while a replication
  connection between the two exists, else `<peer> connection:Connecting`
  (and no `peer-disk` line). On a primary, connected means a row for the peer
  in `pg_stat_replication` (its `application_name` is the peer's address, or
  `<address>-clone` for the base backup of a clone in progress); on
  a standby, a `pg_stat_wal_receiver` row with `status = 'streaming'`.
- On a primary: `disk:UpToDate` (a primary's data is the reference copy).
  `peer-disk` follows the walsender's `state`: `streaming` (the standby has
  caught up and receives each change as it is made) is `UpToDate`;
  `startup`, `catchup` and `backup` (a clone in progress) are `Inconsistent`;
  `stopping` is `Outdated`.
- On a standby that is not streaming: `disk:Outdated`; it has lost the stream
  (or never had it), so from its own point of view its data may be behind.
- On a standby that is streaming: the primary's judgement of this standby,
  asked over the replication connection's address (its `pg_stat_replication`
  row, as above): `streaming` is `disk:UpToDate`, the other states
  `disk:Inconsistent` (catching up). When the primary cannot be asked, the
  standby judges alone: `UpToDate` when it has flushed all the WAL the primary
  last told it of (`pg_stat_wal_receiver.flushed_lsn >= latest_end_lsn`), else
  `Inconsistent`. The peer, the primary, is `peer-disk:UpToDate`.

`sync` is the standby's `sync_state` in the primary's `pg_stat_replication`
(`sync`: each commit waits for it; `async`, `potential`, `quorum`), also seen
from the standby when the primary can be asked. Lag, in bytes: on a primary
`pg_current_wal_lsn()` less the standby's `replay_lsn`; on a standby the
primary's last reported WAL end less `pg_last_wal_replay_lsn()`. In seconds: the
primary's `replay_lag` (else `flush_lag`, `write_lag`), 0 once nothing is
behind; on a standby that is behind, the age of the last replayed transaction
(`pg_last_xact_replay_timestamp()`).

"UpToDate" for `--wait-uptodate`: both disks `UpToDate` and the standby `sync`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field

import psycopg

from esc.ha.pgsql import (
    CONNECT_TIMEOUT_S,
    REPLICATION_ROLE,
    Cluster,
    PgsqlError,
    clone_application_name,
)

RESOURCE = "esc"

UP_TO_DATE = "UpToDate"
INCONSISTENT = "Inconsistent"
OUTDATED = "Outdated"
PRIMARY = "Primary"
SECONDARY = "Secondary"
CONNECTED = "Connected"
CONNECTING = "Connecting"

# pg_stat_replication.state of the peer's walsender -> the peer's disk.
_WALSENDER_DISK = {
    "streaming": UP_TO_DATE,
    "startup": INCONSISTENT,
    "catchup": INCONSISTENT,
    "backup": INCONSISTENT,
    "stopping": OUTDATED,
}
PEER_QUERY_TIMEOUT_S = 2


@dataclass
class PeerStatus:
    address: str
    connection: str  # Connected or Connecting
    role: str | None = None
    disk: str | None = None
    state: str | None = None  # the walsender's state, as the primary sees it
    sync_state: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None


@dataclass
class ReplicationStatus:
    role: str
    disk: str
    peer: PeerStatus
    wal_lsn: str  # primary: current WAL position; standby: last replayed
    synchronous_standby_names: str
    resource: str = RESOURCE
    notes: list[str] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.peer.connection == CONNECTED

    @property
    def uptodate(self) -> bool:
        """Both copies current, and each commit waits for the standby."""
        return (
            self.disk == UP_TO_DATE
            and self.connected
            and self.peer.disk == UP_TO_DATE
            and self.peer.sync_state == "sync"
        )

    def drbd_text(self, statistics: bool = False) -> str:
        """As `drbdadm status` prints it; `statistics` adds the lag and sync state to
        the peer-disk line."""
        lines = [f"{self.resource} role:{self.role}", f"  disk:{self.disk}"]
        if not self.connected:
            lines.append(f"  {self.peer.address} connection:{CONNECTING}")
            return "\n".join(lines) + "\n"
        lines.append(f"  {self.peer.address} role:{self.peer.role}")
        peer_disk = f"    peer-disk:{self.peer.disk}"
        if statistics:
            lag_seconds = "-" if self.peer.lag_seconds is None else f"{self.peer.lag_seconds:.3f}"
            lag_bytes = "-" if self.peer.lag_bytes is None else str(self.peer.lag_bytes)
            peer_disk += (
                f" sync-state:{self.peer.sync_state or '-'}"
                f" lag-bytes:{lag_bytes} lag-seconds:{lag_seconds}"
            )
        lines.append(peer_disk)
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict:
        data = asdict(self)
        data["connected"] = self.connected
        data["uptodate"] = self.uptodate
        return data


_PRIMARY_VIEW = """
SELECT state, sync_state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes,
       extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag))::float8 AS lag_seconds
FROM pg_stat_replication
WHERE application_name = %(name)s OR (application_name = %(clone)s AND state = 'backup')
ORDER BY application_name = %(name)s DESC
LIMIT 1
"""


def _primary_view(conn: psycopg.Connection, peer_name: str) -> dict | None:
    """The peer's row in this primary's pg_stat_replication, None when not connected."""
    names = {"name": peer_name, "clone": clone_application_name(peer_name)}
    row = conn.execute(_PRIMARY_VIEW, names).fetchone()
    if row is None:
        return None
    state, sync_state, lag_bytes, lag_seconds = row
    lag_bytes = max(0, int(lag_bytes)) if lag_bytes is not None else None
    if lag_seconds is None and lag_bytes == 0:
        lag_seconds = 0.0  # PostgreSQL clears the lag times once nothing is behind
    return {
        "state": state,
        "sync_state": sync_state,
        "lag_bytes": lag_bytes,
        "lag_seconds": lag_seconds,
    }


def _ask_primary(cluster: Cluster, host: str, port: int) -> dict | None:
    """This standby's row in its primary's pg_stat_replication, None when it cannot be
    asked (the primary's view decides whether the standby has caught up)."""
    try:
        with psycopg.connect(
            host=host,
            port=port,
            user=REPLICATION_ROLE,
            dbname="postgres",
            passfile=str(cluster.secret_file),
            connect_timeout=PEER_QUERY_TIMEOUT_S,
            autocommit=True,
        ) as conn:
            conn.execute(f"SET statement_timeout = '{PEER_QUERY_TIMEOUT_S}s'")
            return _primary_view(conn, cluster.application_name)
    except psycopg.Error:
        return None


PEER_STANDBY = "standby"  # answers, in recovery: it cannot take a write
PEER_PRIMARY = "primary"  # answers, not in recovery
PEER_DOWN = "down"  # its host refuses the connection: reachable, PostgreSQL not running
PEER_UNREACHABLE = "unreachable"  # no answer at all: dead, or cut off from this node


def peer_state(cluster: Cluster, timeout: float = 0.2) -> str:
    """What the peer's PostgreSQL is, as far as it answers within about `timeout`. A TCP
    connect comes first, bounded by `timeout`: libpq's own connect timeout is 2 s at
    least, too long on the failover's path."""
    peer = cluster.peer
    try:
        socket.create_connection((peer.host, peer.port), timeout=timeout).close()
    except ConnectionRefusedError:
        return PEER_DOWN
    except OSError:
        return PEER_UNREACHABLE
    try:
        with psycopg.connect(
            host=peer.host,
            port=peer.port,
            user=REPLICATION_ROLE,
            dbname="postgres",
            passfile=str(cluster.secret_file),
            connect_timeout=PEER_QUERY_TIMEOUT_S,
            autocommit=True,
        ) as conn:
            conn.execute(f"SET statement_timeout = '{int(timeout * 1000) + 1}ms'")
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except psycopg.OperationalError as exc:
        # Starting up or shutting down: it takes no write.
        return (
            PEER_DOWN
            if "starting up" in str(exc) or "shutting down" in str(exc)
            else (PEER_UNREACHABLE)
        )
    except psycopg.Error:
        return PEER_UNREACHABLE
    return PEER_STANDBY if in_recovery else PEER_PRIMARY


def _primary_status(cluster: Cluster, conn: psycopg.Connection) -> ReplicationStatus:
    lsn, names = conn.execute(
        "SELECT pg_current_wal_lsn()::text, current_setting('synchronous_standby_names')"
    ).fetchone()
    view = _primary_view(conn, cluster.peer.host)
    if view is None:
        peer = PeerStatus(cluster.peer.host, CONNECTING)
    else:
        peer = PeerStatus(
            cluster.peer.host,
            CONNECTED,
            role=SECONDARY,
            disk=_WALSENDER_DISK.get(view["state"], INCONSISTENT),
            **view,
        )
    status = ReplicationStatus(PRIMARY, UP_TO_DATE, peer, lsn, names)
    if names and not status.connected:
        status.notes.append(
            f"synchronous_standby_names is {names} with no standby connected: commits "
            "wait until the standby is back, or until synchronous replication is turned off"
        )
    return status


_STANDBY_VIEW = """
SELECT r.status, r.sender_host, r.sender_port,
       r.flushed_lsn >= r.latest_end_lsn AS flushed_all,
       pg_wal_lsn_diff(r.latest_end_lsn, pg_last_wal_replay_lsn())::bigint AS lag_bytes,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age
FROM pg_stat_wal_receiver r
"""


def _standby_status(cluster: Cluster, conn: psycopg.Connection) -> ReplicationStatus:
    lsn, names = conn.execute(
        "SELECT coalesce(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn())::text, "
        "current_setting('synchronous_standby_names')"
    ).fetchone()
    row = conn.execute(_STANDBY_VIEW).fetchone()
    if row is None or row[0] != "streaming":
        peer = PeerStatus(cluster.peer.host, CONNECTING)
        return ReplicationStatus(SECONDARY, OUTDATED, peer, lsn, names)
    _status, host, port, flushed_all, lag_bytes, replay_age = row
    lag_bytes = max(0, int(lag_bytes)) if lag_bytes is not None else None
    lag_seconds = 0.0 if lag_bytes == 0 else replay_age
    view = _ask_primary(cluster, host, port)
    notes = []
    if view is not None:
        disk = _WALSENDER_DISK.get(view["state"], INCONSISTENT)
        sync_state = view["sync_state"]
    else:
        disk = UP_TO_DATE if flushed_all else INCONSISTENT
        sync_state = None
        notes.append(f"the primary at {host}:{port} could not be asked how it sees this node")
    peer = PeerStatus(
        cluster.peer.host,
        CONNECTED,
        role=PRIMARY,
        disk=UP_TO_DATE,
        state=view["state"] if view else None,
        sync_state=sync_state,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
    )
    return ReplicationStatus(SECONDARY, disk, peer, lsn, names, notes=notes)


def read_status(cluster: Cluster) -> ReplicationStatus:
    """This node's replication state; PgsqlUnavailable when its PostgreSQL does not answer."""
    with cluster.connect() as conn:
        conn.execute(f"SET statement_timeout = '{CONNECT_TIMEOUT_S}s'")
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            return _standby_status(cluster, conn)
        return _primary_status(cluster, conn)


class WaitTimeout(PgsqlError):
    """Replication did not become UpToDate and synchronous in time."""

    def __init__(self, message: str, last: ReplicationStatus | None) -> None:
        super().__init__(message)
        self.last = last


def wait_uptodate(cluster: Cluster, timeout: float, poll: float = 0.2) -> ReplicationStatus:
    """Return the status once it is UpToDate and synchronous; WaitTimeout after `timeout`
    seconds (a PostgreSQL that does not answer yet counts as not UpToDate)."""
    deadline = time.monotonic() + timeout
    last: ReplicationStatus | None = None
    why = ""
    while True:
        try:
            last = read_status(cluster)
            if last.uptodate:
                return last
            why = not_uptodate_reason(last)
        except PgsqlError as exc:
            last, why = None, str(exc)
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"replication is not UpToDate and synchronous after {timeout:g} s: {why}", last
            )
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def not_uptodate_reason(status: ReplicationStatus) -> str:
    if not status.connected:
        return f"the peer {status.peer.address} is not connected (connection:Connecting)"
    if status.disk != UP_TO_DATE:
        return f"this node's disk is {status.disk}"
    if status.peer.disk != UP_TO_DATE:
        return f"the peer's disk is {status.peer.disk}"
    return (
        f"the standby's sync_state is {status.peer.sync_state or 'unknown'}, not sync "
        "(synchronous_standby_names on the primary does not name it)"
    )
