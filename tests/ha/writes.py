"""A steady northbound write load through a pair's VIP, and what it saw across a fault.

One `POST /v0/tenants` every `interval` seconds, each with a new name (`w-<seq>`),
over a kept-alive connection that is dropped and made anew after any failure. A
write counts as acknowledged when the API answered 201; the answer's `ESC-Node`
header names the node that took it. The figures are those of the Patroni peer's
failover client (failover_s, max_gap_s, lost), so the two compare directly:

- failover_s: from the fault to the first write acknowledged by another node
  than the one that acknowledged the last write before the fault;
- max_gap_s: the longest time between two consecutive acknowledged writes, from
  1 s before the fault to that first write on the new active;
- lost: acknowledged writes missing from the surviving active's database;
- overlap: writes the old node acknowledged after the new node's first one
  (two nodes accepting writes at once: must be none).

`DbWriteLoad` is the same load one level down, as the peer's client does it: one
autocommit INSERT every `interval` seconds straight into the pair's PostgreSQL
through a libpq multi-host connection string (`target_session_attrs=read-write`
finds the primary), a new connection after any failure. Its acks name the node by
the address the server answered on (`inet_server_addr()`), and `figures` takes it
as it takes the VIP load.

Used by the HA tests and by bench/bench_failover.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import httpx
import psycopg
from psycopg import sql


@dataclass
class Ack:
    seq: int
    sent: float  # time.time() when sent
    acked: float  # when the 201 arrived
    node: str


@dataclass
class WriteLoad:
    base_url: str  # through the VIP, e.g. http://198.18.60.100:8080
    auth: tuple[str, str]
    interval: float = 0.01
    timeout: float = 0.5
    prefix: str = "w"
    # > 0: a write not answered, or answered 503, is sent again with the same
    # Idempotency-Key for up to this many seconds (as escadm and a well-behaved client
    # do across a switchover); it counts as failed only once that ran out.
    retry_for: float = 0.0
    acks: list[Ack] = field(default_factory=list)
    failures: int = 0
    # Each failed write: its name and its last answer (a status, or "no answer").
    failed: list[str] = field(default_factory=list)
    retries: int = 0
    # Retried writes the server answered other than with the first answer (a 409: it
    # did not know the key, so the write may have been done twice).
    conflicts: list[str] = field(default_factory=list)
    _seq: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> WriteLoad:
        self._thread = threading.Thread(target=self._run, name="write-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, auth=self.auth, timeout=self.timeout, trust_env=False
        )

    def _run(self) -> None:
        client = self._client()
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                self._seq += 1
                seq, sent = self._seq, time.time()
                response, client = self._write(client, self.name(seq))
                ok = response is not None and response.status_code == 201
                if ok and response is not None:
                    self.acks.append(Ack(seq, sent, time.time(), response.headers["ESC-Node"]))
                else:
                    self.failures += 1
                    answer = "no answer" if response is None else str(response.status_code)
                    if response is not None and response.status_code != 503:
                        node = response.headers.get("ESC-Node", "?")
                        answer += f" from {node} at {time.time():.3f}: {response.text[:200]}"
                    self.failed.append(f"{self.name(seq)}: {answer}")
                    client.close()  # the next attempt makes a new connection
                    client = self._client()
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            client.close()

    def _write(self, client: httpx.Client, name: str) -> tuple[httpx.Response | None, httpx.Client]:
        """One write, retried as `retry_for` says; its last response (None: no answer)
        and the client to go on with."""
        deadline = time.monotonic() + self.retry_for
        headers = {"Idempotency-Key": name} if self.retry_for else {}
        attempt = 0
        while True:
            try:
                response = client.post("/v0/tenants", json={"name": name}, headers=headers)
            except httpx.HTTPError:
                response = None
            if attempt and response is not None and response.status_code == 409:
                self.conflicts.append(name)
            retry = response is None or response.status_code == 503
            if not retry or time.monotonic() > deadline or self._stop.is_set():
                return response, client
            attempt += 1
            self.retries += 1
            if response is None:
                client.close()
                client = self._client()
            time.sleep(min(0.5, 0.02 * 2**attempt))

    def name(self, seq: int) -> str:
        return f"{self.prefix}-{seq:07d}"

    def wait_acks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.acks)} of {count} writes acknowledged in {timeout} s "
                    f"({self.failures} failed)"
                )
            time.sleep(0.05)

    def wait_ack_from(self, node: str, after: float, timeout: float) -> Ack:
        deadline = time.monotonic() + timeout
        while True:
            for ack in reversed(self.acks):
                if ack.node == node and ack.sent >= after:
                    return ack
            if time.monotonic() > deadline:
                raise AssertionError(f"no write acknowledged by {node} within {timeout} s")
            time.sleep(0.02)


@dataclass
class DbWriteLoad:
    """Rows `(id, host)` into `table` (made beforehand, on the primary) with ids from
    `first_id` up; an id counts as acknowledged when its INSERT returned. Every attempt
    takes a new id, so an attempt whose answer was lost is never counted twice."""

    conninfo: str  # host=N1,N2 ... target_session_attrs=read-write
    table: str
    first_id: int = 1
    interval: float = 0.01
    acks: list[Ack] = field(default_factory=list)
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DbWriteLoad:
        self._thread = threading.Thread(target=self._run, name="db-write-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)  # a connect to a dead host is bounded by connect_timeout

    def _failed(self, what: str, error: Exception) -> None:
        self.failures += 1
        key = f"{what}:{type(error).__name__}"
        self.errors[key] = self.errors.get(key, 0) + 1

    def _run(self) -> None:
        insert = sql.SQL(
            "INSERT INTO {} (id, host) VALUES (%s, host(inet_server_addr())) RETURNING host"
        ).format(sql.Identifier(self.table))
        ids = itertools.count(self.first_id)
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                if conn is None:
                    try:
                        conn = psycopg.connect(self.conninfo, autocommit=True)
                    except psycopg.Error as error:
                        self._failed("connect", error)
                        # Not at once again: libpq already waited on each host that
                        # does not answer; one that refuses would be hammered.
                        self._stop.wait(min(self.interval, 0.05))
                        continue
                seq, sent = next(ids), time.time()
                try:
                    row = conn.execute(insert, (seq,)).fetchone()
                except psycopg.Error as error:
                    self._failed("write", error)
                    conn.close()
                    conn = None  # the next attempt connects anew, to whichever is primary
                    continue
                self.acks.append(Ack(seq, sent, time.time(), row[0]))
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            if conn is not None:
                conn.close()

    def name(self, seq: int) -> str:
        return str(seq)

    def wait_acks(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.acks)} of {count} database writes acknowledged in "
                    f"{timeout} s ({self.errors})"
                )
            time.sleep(0.05)

    def present(self, attempts: int = 20) -> tuple[str, set[str]]:
        """The primary's address and which of the acknowledged ids it holds, read through
        the same connection string (so on whichever node is the primary now)."""
        query = sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(self.table))
        ids = [a.seq for a in self.acks]
        for attempt in range(attempts):
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    host = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
                    return host, {str(row[0]) for row in conn.execute(query, (ids,))}
            except psycopg.Error:
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0)
        raise AssertionError("not reached")


@dataclass
class FailoverFigures:
    old: str
    new: str
    failover_s: float
    max_gap_s: float
    acked: int
    lost: list[str]
    overlap: list[int]

    def as_json(self) -> dict:
        return {
            "old_primary": self.old,
            "new_primary": self.new,
            "failover_s": round(self.failover_s, 3),
            "max_gap_s": round(self.max_gap_s, 3),
            "acked": self.acked,
            "lost": len(self.lost),
            "overlap": len(self.overlap),
        }


def figures(load: WriteLoad, fault_at: float, present: set[str]) -> FailoverFigures:
    """The figures of one fault at `fault_at` (time.time()), `present` being the tenant
    names the surviving active holds."""
    before = [a for a in load.acks if a.acked <= fault_at]
    if not before:
        raise AssertionError("no write was acknowledged before the fault")
    old = before[-1].node
    first_new = next((a for a in load.acks if a.acked > fault_at and a.node != old), None)
    if first_new is None:
        raise AssertionError(f"no node but {old} acknowledged a write after the fault")
    window = [a.acked for a in load.acks if fault_at - 1 <= a.acked <= first_new.acked]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    overlap = [a.seq for a in load.acks if a.node == old and a.acked > first_new.acked]
    lost = [load.name(a.seq) for a in load.acks if load.name(a.seq) not in present]
    return FailoverFigures(
        old=old,
        new=first_new.node,
        failover_s=first_new.acked - fault_at,
        max_gap_s=max(gaps, default=0.0),
        acked=len(load.acks),
        lost=lost,
        overlap=overlap,
    )
