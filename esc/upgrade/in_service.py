"""The in-service upgrade of an HA pair, package method: one command for what an
operator otherwise types on each node.

    pre-checks → the new release's package onto both nodes (verified) → the standby
    upgraded (its node's package agent: stop, install, start; the active commits
    alone meanwhile) → UpToDate again → a planned switchover to the upgraded node
    (transactions in flight resumed there) → the old active upgraded the same way →
    UpToDate → versions and health verified.

Every step is recorded (esc.upgrade.journal) before and after it runs, and is safe to
run again after it was cut short: it first looks at what the pair already is. So an
orchestrator killed anywhere is continued by running the same command again.

If the upgraded node, once active, fails its health or version check, the upgrade
rolls back by itself while it can do so losing nothing: the old active, the
synchronous standby of the upgraded one, takes the active role back (a switchover),
and the upgraded node gets its old release again (its agent installs the source's
package). Between two patch builds of one maintenance release the data of both is
the same, so this holds at any point of the package method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esc.release.numbers import ReleaseNumber
from esc.upgrade.journal import (
    COMPLETED,
    IN_PROGRESS,
    ROLLED_BACK,
    Journal,
    Record,
    Step,
)
from esc.upgrade.node_api import NodeApi, NodeApiError, NodeFacts, NodeUnreachable, wait_for
from esc.upgrade.pair_access import PairAccess
from esc.upgrade.release_files import ReleasePackage
from esc.upgrade.vip_probe import VipProbe

METHOD_PACKAGE = "package"
# Seconds. One node's package install (stop, pip, start, healthy): measured ~20 s on an
# idle 2-core machine; the bound is for a loaded one.
INSTALL_BOUND = 600.0
UPTODATE_BOUND = 300.0
SWITCHOVER_BOUND = 120.0
# After the switchover: how long the new active may take to answer healthy before the
# upgrade rolls back.
NEW_ACTIVE_BOUND = 60.0
INSTALLING = ("stopping", "installing", "starting")

PACKAGE_STEPS = (
    ("upload", "Copy the package to both nodes"),
    ("upgrade_standby", "Upgrade the standby"),
    ("switchover", "Switch over to the upgraded node"),
    ("upgrade_old_active", "Upgrade the old active"),
    ("verify", "Verify versions, health and replication"),
)


class StepFailed(Exception):
    """A step could not do its work; the message says what the pair is and the fix."""


@dataclass
class Upgrade:
    """One run of the orchestrator over a journal (new or taken up again)."""

    access: PairAccess
    journal: Journal
    package: ReleasePackage
    source_package: ReleasePackage | None  # for a rollback: the release the pair ran
    progress: Callable[[str], None]

    def __post_init__(self) -> None:
        pair = self.access.pair
        self.apis = {
            n.address: NodeApi(pair.url(n.address), self.access.auth, self.access.verify)
            for n in pair.node
        }
        self.vip = NodeApi(pair.vip_url, self.access.auth, self.access.verify)

    @property
    def record(self) -> Record:
        return self.journal.record

    @property
    def target(self) -> str:
        return self.record.target

    def close(self) -> None:
        for api in (*self.apis.values(), self.vip):
            api.close()

    # running it --------------------------------------------------------------------

    def run(self) -> Record:
        """Run the steps not done yet, in order; the record says how it ended."""
        steps = {
            "upload": self.upload,
            "upgrade_standby": lambda: self.upgrade_node(self.record.facts["first"]),
            "switchover": self.switchover,
            "upgrade_old_active": lambda: self.upgrade_node(self.record.facts["second"]),
            "verify": self.verify,
        }
        probe = VipProbe(self.access)
        try:
            with probe:
                while (step := self.record.current) is not None:
                    self.journal.begin(step)
                    self.progress(step.title)
                    try:
                        detail = steps[step.name]()
                    except (StepFailed, NodeApiError, TimeoutError) as exc:
                        self.journal.failed(step, str(exc))
                        if self.record.state == ROLLED_BACK:
                            return self.record
                        raise StepFailed(
                            f"{step.title}: {exc}. The upgrade stopped there; the record is "
                            f"{self.journal.path}. Fix the cause and run the same command "
                            "again to continue, or roll back: escadm upgrade rollback --pair "
                            "PAIR"
                        ) from None
                    self.journal.done(step, detail)
        finally:
            self._keep_interruption(probe)
            self.close()
        self.journal.end(COMPLETED)
        return self.record

    def _keep_interruption(self, probe: VipProbe) -> None:
        figures = self.record.figures
        runs = figures.setdefault("probe_runs", [])
        runs.append(
            {
                "samples": probe.samples,
                "longest_s": round(probe.longest, 3),
                "gaps": len(probe.gaps),
            }
        )
        figures["write_interruption_s"] = round(max(r["longest_s"] for r in runs), 3)
        self.journal.save()

    # steps -------------------------------------------------------------------------

    def upload(self) -> str:
        packages = [self.package] + ([self.source_package] if self.source_package else [])
        done = []
        for address, api in self.apis.items():
            held = {(p["file"], p["sha256"]) for p in api.packages()}
            for package in packages:
                if (package.path.name, package.sha256) in held:
                    done.append(f"{address} had {package.version}")
                    continue
                api.upload(package.path, package.sha256)
                done.append(f"{address} got {package.version}")
        return "; ".join(done)

    def upgrade_node(self, address: str) -> str:
        """Install the target on `address` through its agent, then wait for it to be the
        in-sync standby at the target."""
        api = self.apis[address]
        facts = api.facts()
        started = time.monotonic()
        if facts.version != self.target:
            if facts.role == "ACTIVE":
                raise StepFailed(
                    f"{address} is the active node; its package is installed only once it "
                    "is the standby (after the switchover)"
                )
            state = api.install_state()
            if not (state.get("to") == self.target and state.get("state") in INSTALLING):
                api.install(self.target)
            self._wait_installed(api, self.target)
        self.wait_in_sync_standby(address)
        return f"{address} at {self.target} ({time.monotonic() - started:.1f} s)"

    def _wait_installed(self, api: NodeApi, version: str, rollback: bool = False) -> None:
        def finished() -> dict[str, Any] | None:
            state = api.install_state()
            if state.get("to") == version and state.get("state") in ("done", "failed"):
                return state
            self.progress(f"{api.base_url}: package install {state.get('state', '?')}")
            return None

        state = wait_for(finished, INSTALL_BOUND, f"the install of {version} on {api.base_url}", 1)
        if state["state"] == "failed":
            raise StepFailed(
                f"installing {version} on {api.base_url} failed: {state.get('error', '')}"
            )

    def wait_in_sync_standby(self, address: str) -> NodeFacts:
        """`address` the healthy standby at the target and the pair UpToDate."""
        api = self.apis[address]
        active = self.apis[self.other(address)]

        def ready() -> NodeFacts | None:
            facts = api.facts()
            self.progress(f"{address}: {facts.role}, {facts.replication_detail or 'replication?'}")
            if facts.version != self.target or facts.role != "STANDBY" or not facts.healthy:
                return None
            return facts if self._uptodate(facts, active) else None

        return wait_for(ready, UPTODATE_BOUND, f"{address} the in-sync standby at {self.target}")

    @staticmethod
    def _uptodate(standby: NodeFacts, active: NodeApi) -> bool:
        if standby.uptodate is not None:
            return standby.uptodate
        return bool(active.facts().uptodate)

    def other(self, address: str) -> str:
        return next(a for a in self.apis if a != address)

    def switchover(self) -> str:
        first = self.record.facts["first"]
        old = self.other(first)
        upgraded = self.apis[first].facts()
        if upgraded.role != "ACTIVE":
            self.wait_in_sync_standby(first)
            before = {tx["id"] for tx in self.vip.transactions_since(self.record.started_at)}
            result = self.apis[old].switchover()
            self.record.figures["switchover_s"] = round(result["seconds"], 3)
            self.record.figures["in_flight_at_switchover"] = result["left_in_flight"]
            self.record.facts["seen_before_switchover"] = sorted(before)
            self.journal.save()
        try:
            wait_for(
                lambda: self._healthy_active(first),
                NEW_ACTIVE_BOUND,
                f"{first} the healthy active at {self.target}",
            )
        except TimeoutError as exc:
            self.roll_back_quickly(first, str(exc))
            raise StepFailed(self.record.rollback) from None
        after = {tx["id"] for tx in self.vip.transactions_since(self.record.started_at)}
        lost = sorted(set(self.record.facts.get("seen_before_switchover", [])) - after)
        self.record.figures["acknowledged_lost"] = len(lost)
        if lost:
            raise StepFailed(f"transactions acknowledged before the switchover are gone: {lost}")
        return f"{first} is the active at {self.target}"

    def _healthy_active(self, address: str) -> bool:
        facts = self.apis[address].facts()
        return facts.role == "ACTIVE" and facts.healthy and facts.version == self.target

    def roll_back_quickly(self, upgraded: str, why: str) -> None:
        """The upgraded node failed as the active: the old active, its synchronous
        standby, takes the role back and the upgraded node gets the source again."""
        old = self.other(upgraded)
        source = self.record.source
        self.progress(f"rolling back: {why}")
        try:
            if self.apis[upgraded].facts().role == "ACTIVE":
                self.apis[upgraded].switchover()
        except NodeUnreachable:
            pass  # a dead active: the pair's own failover gives the old node the role
        wait_for(
            lambda: self.apis[old].facts().role == "ACTIVE",
            SWITCHOVER_BOUND,
            f"{old} active again",
        )
        if self.source_package is not None:
            self.apis[upgraded].install(source, rollback=True)
            self._wait_installed(self.apis[upgraded], source)
        self.record.rollback = (
            f"quick rollback: {upgraded} failed as the active at {self.target} ({why}); "
            f"{old} at {source} took the active role back as its synchronous standby, so "
            "no acknowledged write was lost"
            + (f"; {upgraded} was given {source} again" if self.source_package else "")
        )
        self.journal.end(ROLLED_BACK, why)

    def verify(self) -> str:
        facts = [api.facts() for api in self.apis.values()]
        problems = [f.summary for f in facts if f.version != self.target or not f.healthy]
        roles = sorted(f.role for f in facts)
        if roles != ["ACTIVE", "STANDBY"]:
            problems.append(f"roles are {', '.join(roles)}, not one ACTIVE and one STANDBY")
        standby = next((f for f in facts if f.role == "STANDBY"), None)
        if standby is not None and standby.uptodate is False:
            problems.append(f"replication is not UpToDate: {standby.replication_detail}")
        if problems:
            raise StepFailed("; ".join(problems))
        in_flight = self.record.figures.get("in_flight_at_switchover", [])
        states = self._wait_final(in_flight)
        self.record.figures["in_flight_states"] = states
        since = self.vip.transactions_since(self.record.started_at)
        counts: dict[str, int] = {}
        for tx in since:
            counts[tx["state"]] = counts.get(tx["state"], 0) + 1
        self.record.figures["transactions_during_upgrade"] = counts
        self.journal.save()
        not_success = {tx: s for tx, s in states.items() if s != "SUCCESS"}
        if not_success:
            raise StepFailed(
                f"transactions in flight at the switchover did not succeed: {not_success}"
            )
        self.record.facts["versions_after"] = {f.address: f.version for f in facts}
        self.journal.save()
        return ", ".join(f.summary for f in facts)

    def _wait_final(self, tx_ids: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}

        def final() -> bool:
            for tx_id in tx_ids:
                states[tx_id] = self.vip.call("GET", f"/v0/transactions/{tx_id}")["state"]
            return all(s in ("SUCCESS", "FAILED") for s in states.values())

        wait_for(final, INSTALL_BOUND, "the transactions in flight at the switchover to end", 0.5)
        return states


def step_titles() -> set[str]:
    return {title for _name, title in PACKAGE_STEPS}


def new_record_steps() -> list[Step]:
    return [Step(name, title) for name, title in PACKAGE_STEPS]


def check_resumable(record: Record, method: str, target: ReleaseNumber) -> str:
    """Why the recorded upgrade cannot be continued by this command ("" when it can)."""
    if record.state != IN_PROGRESS:
        return ""
    if record.method != method or record.target != str(target):
        return (
            f"an upgrade {record.source} → {record.target} ({record.method}) is not finished "
            f"(step {record.current.title if record.current else '?'}): continue it with "
            f"--to {record.target}, or roll it back first"
        )
    return ""
