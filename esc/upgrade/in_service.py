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

from esc.ha.provider import ProviderError
from esc.node.installer import DONE as INSTALLED
from esc.node.installer import FAILED as NOT_INSTALLED
from esc.node.installer import RUNNING as INSTALLING
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

# The same steps bring a pair back to its old release (a rollback): "upgraded" is then
# the node given the old release.
PACKAGE_STEPS = (
    ("upload", "Copy the packages to both nodes"),
    ("upgrade_standby", "Install the release on the standby"),
    ("switchover", "Switch over to the upgraded node"),
    ("upgrade_old_active", "Install the release on the old active"),
    ("verify", "Verify versions, health and replication"),
)


class StepFailed(Exception):
    """A step could not do its work; the message says what the pair is and the fix."""


@dataclass
class Upgrade:
    """One run of the orchestrator over a journal (new or taken up again): bring both
    nodes to the record's target release, the standby first. A rollback is such a run
    too, its target the release the pair ran before (installed as a downgrade)."""

    access: PairAccess
    journal: Journal
    package: ReleasePackage  # the target's
    source_package: ReleasePackage | None  # the release to go back to (an upgrade's)
    progress: Callable[[str], None]
    rolling_back: bool = False

    def __post_init__(self) -> None:
        pair = self.access.pair
        self.apis = {
            n.address: NodeApi(pair.url(n.address), self.access.auth, self.access.verify)
            for n in pair.node
        }

    @property
    def record(self) -> Record:
        return self.journal.record

    @property
    def goal(self) -> str:
        return self.record.target

    def close(self) -> None:
        for api in self.apis.values():
            api.close()

    # running it --------------------------------------------------------------------

    def run(self) -> Record:
        """Run the steps not done yet, in order; the record says how it ended."""
        steps = self.step_actions()
        probe = VipProbe(self.access)
        try:
            with probe:
                while (step := self.record.current) is not None:
                    self.journal.begin(step)
                    self.progress(step.title)
                    try:
                        detail = steps[step.name]()
                    except (StepFailed, NodeApiError, ProviderError, TimeoutError) as exc:
                        self.journal.failed(step, str(exc))
                        if self.record.state == ROLLED_BACK:
                            return self.record
                        raise StepFailed(
                            f"{step.title}: {exc}. It stopped there; the record is "
                            f"{self.journal.path}. Fix the cause and run the same command "
                            "again to continue"
                            + (
                                ""
                                if self.rolling_back
                                else ", or roll back: escadm upgrade rollback --pair PAIR"
                            )
                        ) from None
                    self.journal.done(step, detail)
        finally:
            self._keep_interruption(probe)
            self.close()
        self.journal.end(ROLLED_BACK if self.rolling_back else COMPLETED)
        return self.record

    def step_actions(self) -> dict[str, Callable[[], str]]:
        """What each step of the record does (the method's)."""
        return {
            "upload": self.upload,
            "upgrade_standby": self.upgrade_standby,
            "switchover": self.switchover,
            "upgrade_old_active": self.upgrade_standby,  # the old active is the standby now
            "verify": self.verify,
        }

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

    # where the pair stands ---------------------------------------------------------

    def other(self, address: str) -> str:
        return next(a for a in self.apis if a != address)

    def active(self) -> str:
        """The address of the pair's active node (waited for while the role moves)."""

        def one_active() -> str | None:
            found = []
            for address, api in self.apis.items():
                try:
                    if api.facts().role == "ACTIVE":
                        found.append(address)
                except NodeUnreachable:
                    continue
            return found[0] if len(found) == 1 else None

        return wait_for(one_active, SWITCHOVER_BOUND, "one active node in the pair")

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

    def upgrade_standby(self) -> str:
        """Install the goal on the node that is not the active (its agent stops it,
        installs, starts it), then wait for it to be the in-sync standby at the goal."""
        address = self.other(self.active())
        api = self.apis[address]
        started = time.monotonic()
        facts = wait_for(api.facts, UPTODATE_BOUND, f"{address} answers")
        if facts.version != self.goal:
            state = api.install_state()
            if not (state.get("to") == self.goal and state.get("state") in INSTALLING):
                api.install(self.goal, rollback=self.rolling_back)
            self._wait_installed(api, self.goal)
        self.wait_in_sync_standby(address)
        return f"{address} at {self.goal} ({time.monotonic() - started:.1f} s)"

    def _wait_installed(self, api: NodeApi, version: str) -> None:
        def finished() -> dict[str, Any] | None:
            state = api.install_state()
            if state.get("to") == version and state.get("state") in (INSTALLED, NOT_INSTALLED):
                return state
            self.progress(f"{api.base_url}: package install {state.get('state', '?')}")
            return None

        state = wait_for(finished, INSTALL_BOUND, f"the install of {version} on {api.base_url}", 1)
        if state["state"] == NOT_INSTALLED:
            raise StepFailed(
                f"installing {version} on {api.base_url} failed: {state.get('error', '')}"
            )

    def wait_in_sync_standby(self, address: str, version: str = "") -> NodeFacts:
        """`address` the healthy standby at `version` (the goal) and the pair UpToDate."""
        version = version or self.goal
        api = self.apis[address]
        active = self.apis[self.other(address)]

        def ready() -> NodeFacts | None:
            facts = api.facts()
            self.progress(f"{address}: {facts.role}, {facts.replication_detail or 'replication?'}")
            if facts.version != version or facts.role != "STANDBY" or not facts.healthy:
                return None
            return facts if self._uptodate(facts, active) else None

        return wait_for(ready, UPTODATE_BOUND, f"{address} the in-sync standby at {version}")

    def _uptodate(self, standby: NodeFacts, active: NodeApi) -> bool:
        if standby.uptodate is not None:
            return standby.uptodate
        reported = active.facts().uptodate
        if reported is None:
            # Both nodes run a release that does not report replication (before 1.3): a
            # healthy standby is all they tell, and that is what is recorded.
            self.record.facts.setdefault("replication_unreported", []).append(standby.address)
            return True
        return reported

    def switchover(self) -> str:
        """The active role to the node at the goal, unless the active runs it already."""
        old = self.active()
        if self.apis[old].facts().version == self.goal:
            return f"{old} is the active at {self.goal} already"
        new = self.other(old)
        self.wait_in_sync_standby(new)
        # Read on the nodes themselves, not through the VIP, which moves meanwhile.
        before = {tx["id"] for tx in self.apis[old].transactions_since(self.record.started_at)}
        self.record.facts["seen_before_switchover"] = sorted(before)
        result = self.apis[old].switchover()
        self.record.figures["switchover_s"] = round(result["seconds"], 3)
        self.record.figures["in_flight_at_switchover"] = result["left_in_flight"]
        self.journal.save()
        try:
            wait_for(
                lambda: self._healthy_active(new),
                NEW_ACTIVE_BOUND,
                f"{new} the healthy active at {self.goal}",
            )
        except TimeoutError as exc:
            if self.rolling_back:
                raise
            self.roll_back_quickly(new, str(exc))
            raise StepFailed(self.record.rollback) from None
        after = {tx["id"] for tx in self.apis[new].transactions_since(self.record.started_at)}
        lost = sorted(before - after)
        self.record.figures["acknowledged_lost"] = len(lost)
        if lost:
            raise StepFailed(f"transactions acknowledged before the switchover are gone: {lost}")
        return f"{new} is the active at {self.goal} ({result['seconds']:.3f} s)"

    def _healthy_active(self, address: str) -> bool:
        facts = self.apis[address].facts()
        return facts.role == "ACTIVE" and facts.healthy and facts.version == self.goal

    def roll_back_quickly(self, upgraded: str, why: str) -> None:
        """The upgraded node failed as the active: the old active, its synchronous
        standby, takes the role back and the upgraded node gets the source again."""
        old = self.other(upgraded)
        source = self.record.source
        self.progress(f"rolling back: {why}")
        try:
            if self.apis[upgraded].facts().role == "ACTIVE":
                self.apis[upgraded].switchover()
        except NodeApiError as exc:
            self.progress(
                f"{upgraded} could not hand the role back ({exc}): the pair's own "
                "failover gives it to the old node"
            )
        wait_for(
            lambda: self.apis[old].facts().role == "ACTIVE",
            SWITCHOVER_BOUND,
            f"{old} active again",
        )
        if self.source_package is not None:
            self.apis[upgraded].install(source, rollback=True)
            self._wait_installed(self.apis[upgraded], source)
        self.record.rollback = (
            f"quick rollback: {upgraded} failed as the active at {self.goal} ({why}); "
            f"{old} at {source} took the active role back as its synchronous standby, so "
            "no acknowledged write was lost"
            + (f"; {upgraded} was given {source} again" if self.source_package else "")
        )
        self.journal.end(ROLLED_BACK, why)

    def verify(self) -> str:
        facts = [api.facts() for api in self.apis.values()]
        problems = [f.summary for f in facts if f.version != self.goal or not f.healthy]
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
        counts: dict[str, int] = {}
        active = self.apis[self.active()]
        for tx in active.transactions_since(self.record.started_at):
            counts[tx["state"]] = counts.get(tx["state"], 0) + 1
        self.record.figures["transactions_during_upgrade"] = counts
        self.record.facts["versions_after"] = {f.address: f.version for f in facts}
        self.journal.save()
        not_success = {tx: s for tx, s in states.items() if s != "SUCCESS"}
        if not_success:
            raise StepFailed(f"transactions in flight at the switchover failed: {not_success}")
        return ", ".join(f.summary for f in facts)

    def _wait_final(self, tx_ids: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        active = self.apis[self.active()]

        def final() -> bool:
            for tx_id in tx_ids:
                states[tx_id] = active.call("GET", f"/v0/transactions/{tx_id}")["state"]
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
    if record.method == "package-rollback":
        return (
            f"a rollback of the pair to {record.target} is not finished: run escadm upgrade "
            "rollback --pair PAIR again to continue it"
        )
    if record.method != method or record.target != str(target):
        return (
            f"an upgrade {record.source} → {record.target} ({record.method}) is not finished "
            f"(step {record.current.title if record.current else '?'}): continue it with "
            f"--to {record.target}, or roll it back first"
        )
    return ""
