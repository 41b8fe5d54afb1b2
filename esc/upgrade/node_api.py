"""One node of a pair (or its VIP) as an upgrade sees it: its REST API, nothing else.

Every call is bounded; a node that does not answer is a NodeUnreachable, which an
upgrade step may wait out (a node restarting), never a crash. A node of a release
older than the node API (`GET /esc/node`, the package agent) still gives what its
API has: version, health, role, op_mode and its transactions; what it cannot give
is reported as not known, and a step that needs it says which release brings it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Seconds: a request on the pair's LAN; a node that takes longer is not well.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 30.0
UPLOAD_TIMEOUT = 300.0
# A backup or a restore of a large database takes minutes (docs/benchmarks.md); the node
# answers once it is done, so the read waits for it.
BACKUP_TIMEOUT = 1800.0
CHECKSUM_HEADER = "X-Checksum-Sha256"
CHUNK = 1 << 20


class NodeApiError(Exception):
    """The node answered with a refusal; the message is its problem detail."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NodeUnreachable(NodeApiError):
    """Nothing answered at the node's address (it may be restarting)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 0)


@dataclass(frozen=True)
class NodeFacts:
    """What one answer of a node says about it, for the checks and the report."""

    address: str
    version: str
    role: str  # ACTIVE, STANDBY, FAULT, STARTING, STANDALONE
    reason: str
    healthy: bool
    health_detail: str
    op_mode: str
    in_progress: int
    failed_temporarily: int | None  # None: this node's release does not say
    uptodate: bool | None  # None: not reported (an older release's node)
    replication_detail: str
    replay_lag_s: float | None
    free_bytes: int | None
    vip_held: bool | None
    schema: dict[str, Any] = field(default_factory=dict)
    node_api: bool = True  # False: a release before GET /esc/node

    @property
    def summary(self) -> str:
        health = "healthy" if self.healthy else f"unhealthy ({self.health_detail})"
        return f"{self.address}: {self.version} {self.role}, {health}, {self.op_mode}"


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("message") or body)
    return str(body)


class NodeApi:
    """The API at `base_url` (a node's own address, or the pair's VIP)."""

    def __init__(self, base_url: str, auth: tuple[str, str], verify: str | bool) -> None:
        self.base_url = base_url
        self.host = httpx.URL(base_url).host  # the node's address, as the pair names it
        self._http = httpx.Client(
            base_url=base_url,
            auth=auth,
            verify=verify,
            trust_env=False,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # the transport -----------------------------------------------------------------

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """The JSON answer (None when empty). A status in `ok` is returned as such with
        its JSON, other 4xx/5xx raise NodeApiError."""
        response = self.response(method, path, **kwargs)
        if response.status_code >= 400 and response.status_code not in ok:
            raise NodeApiError(
                f"{method} {self.base_url}{path}: {response.status_code} {_problem(response)}",
                response.status_code,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise NodeApiError(
                f"{method} {self.base_url}{path}: an answer that is not JSON",
                response.status_code,
            ) from None

    def response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise NodeUnreachable(
                f"{method} {self.base_url}{path}: no answer ({exc.__class__.__name__}: {exc})"
            ) from None

    # what the node is --------------------------------------------------------------

    def facts(self) -> NodeFacts:
        response = self.response("GET", "/esc/node")
        if response.status_code == 404:
            return self._facts_of_an_older_release()
        if response.status_code >= 400:
            raise NodeApiError(
                f"GET {self.base_url}/esc/node: {response.status_code} {_problem(response)}",
                response.status_code,
            )
        return facts_of(response.json(), self.host)

    def _facts_of_an_older_release(self) -> NodeFacts:
        health = self.call("GET", "/esc/health", ok=(503,))
        version = self.call("GET", "/esc/version")
        ha = self.call("GET", "/esc/ha", ok=(409,))  # 409: a standalone node
        mode = self.call("GET", "/esc/op_mode")
        running = self.call("GET", "/v0/transactions", params={"in_progress": "true"})
        failing = [c for c in health.get("checks", []) if not c.get("ok", True)]
        return NodeFacts(
            address=self.host,
            version=version["full"],
            role=ha.get("role", "STANDALONE"),
            reason=ha.get("reason", ""),
            healthy=health.get("status_code") == 2000,
            health_detail="; ".join(f"{c['name']}: {c.get('detail', '')}" for c in failing)
            or health.get("message", ""),
            op_mode=mode["mode"],
            in_progress=len(running),
            failed_temporarily=None,
            uptodate=None,
            replication_detail=f"release {version['full']} does not report replication",
            replay_lag_s=None,
            free_bytes=None,
            vip_held=None,
            node_api=False,
        )

    # planned role changes ----------------------------------------------------------

    def switchover(self) -> dict[str, Any]:
        return self.call("POST", "/esc/ha/switchover")

    def set_op_mode(self, mode: str) -> str:
        return self.call("PUT", "/esc/op_mode", json={"mode": mode})["mode"]

    # the package agent -------------------------------------------------------------

    def packages(self) -> list[dict[str, Any]]:
        return self.call("GET", "/esc/node/packages")

    def upload(self, wheel: Path, sha256: str) -> dict[str, Any]:
        with wheel.open("rb") as body:
            return self.call(
                "PUT",
                f"/esc/node/packages/{wheel.name}",
                content=body.read(),
                headers={"X-Checksum-Sha256": sha256, "Content-Type": "application/octet-stream"},
                timeout=UPLOAD_TIMEOUT,
            )

    def install(self, version: str, *, rollback: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"version": version}
        if rollback:
            body["rollback"] = True
        return self.call("POST", "/esc/node/package/install", json=body)

    def install_state(self) -> dict[str, Any]:
        return self.call("GET", "/esc/node/package/install")

    # backups -----------------------------------------------------------------------

    def take_backup(
        self, schema: str | None = None, for_release: str | None = None
    ) -> dict[str, Any]:
        """A backup of the node's database kept on the node (on the active or a standby):
        file, sha256, size, schema, taken_at, node, role, ...; `schema`: as of that older
        revision, `for_release`: for that older release's restore."""
        body = {k: v for k, v in (("schema", schema), ("for_release", for_release)) if v}
        return self.call("POST", "/esc/node/backups", json=body, timeout=BACKUP_TIMEOUT)

    def backups(self) -> list[dict[str, Any]]:
        return self.call("GET", "/esc/node/backups")

    def delete_backup(self, file: str) -> None:
        self.call("DELETE", f"/esc/node/backups/{file}")

    def download_backup(self, file: str, to: Path) -> Path:
        """The node's backup `file` written to `to` (a directory: to/file), mode 0600,
        its sha256 checked against the node's X-Checksum-Sha256 before it is renamed into
        place; NodeApiError (and nothing written) when it does not match."""
        target = to / file if to.is_dir() else to
        partial = target.with_name(f".{target.name}.partial")
        path = f"/esc/node/backups/{file}"
        try:
            with self._http.stream("GET", path, timeout=BACKUP_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    raise NodeApiError(
                        f"GET {self.base_url}{path}: {response.status_code} {_problem(response)}",
                        response.status_code,
                    )
                expected = response.headers.get(CHECKSUM_HEADER, "").lower()
                digest = hashlib.sha256()
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise NodeUnreachable(
                f"GET {self.base_url}{path}: no answer ({exc.__class__.__name__}: {exc})"
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            raise NodeApiError(
                f"GET {self.base_url}{path}: the body's sha256 is {digest.hexdigest()}, the "
                f"node says {expected or 'nothing'} ({CHECKSUM_HEADER}): damaged on the way "
                "or on the node's disk; download it again",
                response.status_code,
            )
        os.replace(partial, target)
        return target

    def upload_backup(self, path: Path, sha256: str, *, allow_unsigned: bool = False) -> dict:
        """Upload the archive at `path` (its sha256 given, as the node checks it) to the
        node's backups, under its own name, for a restore there."""
        params = {"allow_unsigned": "true"} if allow_unsigned else {}
        return self.call(
            "PUT",
            f"/esc/node/backups/{path.name}",
            content=_chunks(path),
            params=params,
            headers={
                CHECKSUM_HEADER: sha256,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
            timeout=BACKUP_TIMEOUT,
        )

    def restore(self, file: str, *, allow_unsigned: bool = False) -> dict[str, Any]:
        """Restore the node's backup `file` (on the pair's active node): the result as
        `escadm restore --json` gives it."""
        body = {"file": file, "allow_unsigned": allow_unsigned}
        return self.call("POST", "/esc/node/restore", json=body, timeout=BACKUP_TIMEOUT)

    # the pair's work ---------------------------------------------------------------

    def transactions_since(self, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Transactions created at or after `since` (epoch seconds), newest first."""
        from datetime import UTC, datetime

        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(1000):  # pages; a longer list is a server bug
            page = self.response("GET", "/v0/transactions", params=params)
            if page.status_code >= 400:
                raise NodeApiError(
                    f"GET {self.base_url}/v0/transactions: {page.status_code} {_problem(page)}",
                    page.status_code,
                )
            for tx in page.json():
                created = datetime.fromisoformat(tx["created_at"])
                if created.tzinfo is None:
                    created = created.replace(tzinfo=UTC)
                if created.timestamp() < since:
                    return found
                found.append(tx)
            following = page.links.get("next", {}).get("url")
            if not following:
                return found
            params = dict(httpx.URL(following).params)
        return found


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes, a piece at a time: an archive is not read whole into memory."""
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def _replication_detail(replication: dict[str, Any]) -> str:
    """drbdadm's words: `disk:UpToDate peer-disk:UpToDate sync`, or why it is unknown."""
    if replication.get("error"):
        return f"unreadable: {replication['error']}"
    peer = replication.get("peer") or {}
    words = [f"role:{replication.get('role')}", f"disk:{replication.get('disk')}"]
    if peer.get("connection") != "Connected":
        words.append(f"{peer.get('address', 'peer')} connection:{peer.get('connection')}")
    else:
        words.append(f"peer-disk:{peer.get('disk')}")
        words.append(str(peer.get("sync_state")))
    return " ".join(words)


def facts_of(body: dict[str, Any], address: str) -> NodeFacts:
    """NodeFacts from a `GET /esc/node` answer (esc.api.node_schemas.NodeView)."""
    health = body.get("health") or {}
    replication = body.get("replication")
    transactions = body.get("transactions") or {}
    failing = [c for c in health.get("checks", []) if not c.get("ok", True)]
    peer = (replication or {}).get("peer") or {}
    return NodeFacts(
        address=address,
        version=body["version"],
        role=body["role"],
        reason=body.get("role_reason", ""),
        healthy=bool(health.get("passed")),
        health_detail="; ".join(f"{c['name']}: {c.get('detail', '')}" for c in failing),
        op_mode=(body.get("op_mode") or {}).get("mode") or "",
        in_progress=int(transactions.get("in_progress") or 0),
        failed_temporarily=None,  # the engine retries a VIM's transient errors in the step
        uptodate=replication.get("uptodate") if replication else None,
        replication_detail=_replication_detail(replication) if replication else "standalone",
        replay_lag_s=peer.get("lag_seconds"),
        free_bytes=(body.get("disk") or {}).get("free_bytes"),
        vip_held=(body.get("vip") or {}).get("held"),
        schema=body.get("schema") or {},
    )


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    """`check()`'s first truthy value; TimeoutError naming `what` after `timeout` s.
    A node that does not answer, or answers 503 (its database still starting, its
    role moving), counts as not yet: a node restarting."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            value = check()
            if value:
                return value
        except NodeApiError as exc:
            if exc.status not in (0, 503):
                raise
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s{f' ({last})' if last else ''}")
        time.sleep(interval)
