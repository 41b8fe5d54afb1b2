"""The pre-checks of an in-service upgrade: what must hold before anything changes.

Each check names what it found and, when it fails, what to fix. They are run on the
facts the nodes give over their API, so they are the same whatever the VIM is.
"""

from __future__ import annotations

from dataclasses import dataclass

from esc.upgrade.node_api import NodeFacts

# A standby further behind than this may take long to catch up at the switchover.
MAX_REPLAY_LAG_S = 1.0
# Room a node needs for the packages it is given (the target's and the source's).
PACKAGE_ROOM_FACTOR = 4


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def pair_checks(
    facts: dict[str, NodeFacts],
    vip: NodeFacts | None,
    vip_error: str,
    source: str,
    package_bytes: int,
    max_lag_s: float = MAX_REPLAY_LAG_S,
    node_api: bool = True,
) -> list[Check]:
    """The checks of a pair whose nodes answered with `facts` (by address); `node_api`:
    the method needs each node's package agent (the package method)."""
    checks: list[Check] = []
    nodes = list(facts.values())
    for f in nodes:
        checks.append(
            Check(
                f"{f.address} healthy",
                f.healthy,
                f.summary,
                "" if f.healthy else "escadm health on that node says what is wrong; fix it first",
            )
        )
    roles = sorted(f.role for f in nodes)
    checks.append(
        Check(
            "one active, one standby",
            roles == ["ACTIVE", "STANDBY"],
            ", ".join(f"{f.address} {f.role}" for f in nodes),
            "the pair must be whole: escadm status on each node; a FAULT node says why",
        )
    )
    active = next((f for f in nodes if f.role == "ACTIVE"), None)
    standby = next((f for f in nodes if f.role == "STANDBY"), None)
    reporter = standby if standby is not None and standby.uptodate is not None else active
    if reporter is None or reporter.uptodate is None:
        checks.append(
            Check(
                "replication UpToDate and synchronous",
                True,
                "not reported by the nodes' release; the switchover itself refuses a standby "
                "that is not UpToDate",
            )
        )
    else:
        checks.append(
            Check(
                "replication UpToDate and synchronous",
                bool(reporter.uptodate),
                reporter.replication_detail,
                "wait for it: escadm replication status --wait-uptodate on the standby",
            )
        )
    # The active sees its standby's replay lag (the standby's own view has none).
    lag = next(
        (f.replay_lag_s for f in (active, standby) if f is not None and f.replay_lag_s is not None),
        None,
    )
    if lag is not None:
        checks.append(
            Check(
                f"replay lag under {max_lag_s:g} s",
                lag <= max_lag_s,
                f"{lag:.3f} s",
                "the standby replays slowly: look at its load and disk before upgrading",
            )
        )
    versions = sorted({f.version for f in nodes})
    checks.append(
        Check(
            f"both nodes at {source}",
            versions == [source],
            ", ".join(f"{f.address} {f.version}" for f in nodes),
            "both nodes must run the same release before an upgrade; finish or roll back "
            "the earlier one",
        )
    )
    for f in nodes:
        if node_api and not f.node_api:
            checks.append(
                Check(
                    f"{f.address}: node API",
                    False,
                    f"release {f.version} has no node API (no package agent)",
                    "an in-service upgrade by this command needs 1.3.0.1 or later on both "
                    "nodes; upgrade the pair there by its release's own procedure first",
                )
            )
        if f.failed_temporarily:
            checks.append(
                Check(
                    f"{f.address}: no transaction failed temporarily",
                    False,
                    f"{f.failed_temporarily} waiting for a retry",
                    "let them end or fail (escadm deployment list), then upgrade",
                )
            )
        if f.free_bytes is not None:
            room = PACKAGE_ROOM_FACTOR * package_bytes
            checks.append(
                Check(
                    f"{f.address}: disk space",
                    f.free_bytes >= room,
                    f"{f.free_bytes // 2**20} MiB free, {room // 2**20} MiB needed",
                    "free space in the node's home",
                )
            )
    if vip is None:
        checks.append(
            Check("VIP answering", False, vip_error, "the VIP must answer: check keepalived")
        )
    else:
        checks.append(
            Check(
                "VIP answering",
                vip.role == "ACTIVE",
                f"answered by a {vip.role} node at {vip.version}",
                "the VIP must be on the active node: escadm status on each node",
            )
        )
    return checks
