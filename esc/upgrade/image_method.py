"""The in-service upgrade of an HA pair by image, across releases (a schema change
between them): each node replaced by the same node made from the new release's
image, through the node provider that runs it (esc.upgrade.node_replace).

    prepare: each node's parameters read from its provider and recorded
    → the standby redeployed from the new image; it joins the pair and replicates the
      old active (a new release's standby runs on the old schema: it migrates only
      once it holds the active role), until UpToDate
    → the switchover: the pair into MAINTENANCE (the mode is replicated), then the old
      active shut down in order by its provider (its engine hands the active role over
      to the in-sync standby, as a planned switchover, then its database stops) and
      left powered off with its disk: the old release's data as it was
    → the upgraded node takes the role, migrates the schema and resumes the
      transactions in flight; once its version and health are verified the pair goes
      back to OPERATION, and only from then on does the new release acknowledge writes
    → the old active redeployed from the new image, joining as the standby; UpToDate
    → versions, health and replication verified.

Quick rollback, by itself when the upgraded node fails as the active: while the new
release has acknowledged no write (the pair is still in MAINTENANCE) the old active's
disk holds every acknowledged write, so the upgraded node is powered off, the old
active's outdated mark cleared (it was the pair's data all along) and powered on; it
takes the role back, and the upgraded node is redeployed from the old image as its
standby. Once the new release has acknowledged a write, going back is the full
rollback (the old release redeployed and a backup restored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from esc.ha.provider import NodeProvider, ProviderError
from esc.upgrade.in_service import NEW_ACTIVE_BOUND, SWITCHOVER_BOUND, StepFailed, Upgrade
from esc.upgrade.journal import ROLLED_BACK, Step
from esc.upgrade.node_api import NodeApiError, NodeFacts, NodeUnreachable, wait_for
from esc.upgrade.node_replace import recorded_parameters, replace_node

METHOD_IMAGE = "image"
IMAGE_STEPS = (
    ("prepare", "Record each node's parameters at its provider"),
    ("replace_standby", "Redeploy the standby from the new image"),
    ("switchover", "Hand the active role to the upgraded node, which migrates the schema"),
    ("replace_old_active", "Redeploy the old active from the new image"),
    ("verify", "Verify versions, health and replication"),
)
MAINTENANCE, OPERATION = "MAINTENANCE", "OPERATION"
# The old active's orderly shutdown: its engine hands the role over (well under a
# second), then its services stop (seconds).
SHUTDOWN_GRACE = 60.0
IN_FLIGHT = "/v0/transactions"  # ?in_progress=true: those not ended, of every release
TAKEOVER_POLL = 0.02  # seconds between two questions to the node taking over


def image_name(version: str) -> str:
    """The image of a release, as an image is named by default (the lab's names)."""
    return f"esc-{version}"


def new_image_steps() -> list[Step]:
    return [Step(name, title) for name, title in IMAGE_STEPS]


@dataclass
class ImageUpgrade(Upgrade):
    """An upgrade by image of the pair: the steps above over the record's journal.

    The record's facts hold what a run taken up again needs: the nodes' parameters
    (`node_parameters`, by name), the images (`images`: source, target), the nodes of
    the switchover (`switch`: old, new) and whether the new release has acknowledged
    writes (`new_acknowledges`)."""

    provider: NodeProvider | None = None
    ha_pair: str = field(default="", repr=False)  # the pair file: a secret

    @property
    def nodes(self) -> NodeProvider:
        assert self.provider is not None, "an upgrade by image needs the node provider"
        return self.provider

    def step_actions(self) -> dict[str, Callable[[], str]]:
        return {
            "prepare": self.prepare,
            "replace_standby": self.replace_standby,
            "switchover": self.switchover,
            "replace_old_active": self.replace_old_active,
            "verify": self.verify,
        }

    def close(self) -> None:
        super().close()
        self.nodes.close()

    @property
    def facts(self) -> dict[str, Any]:
        return self.record.facts

    def name_of(self, address: str) -> str:
        return self.access.pair.node_named(address).name

    def _replace(self, address: str, image: str) -> None:
        name = self.name_of(address)
        replace_node(
            self.nodes,
            name,
            self.facts["node_parameters"][name],
            image,
            self.ha_pair,
            self.progress,
        )

    # steps -------------------------------------------------------------------------

    def prepare(self) -> str:
        recorded = self.facts.setdefault("node_parameters", {})
        for node in self.access.pair.node:
            if node.name not in recorded:
                recorded[node.name] = recorded_parameters(self.nodes, node.name, node.parameters)
        self.journal.save()
        return "; ".join(f"{name}: {p['image']}, {p['ip']}" for name, p in recorded.items())

    def replace_standby(self) -> str:
        started = time.monotonic()
        standby = self.other(self.active())
        if self._version_of(standby) != self.goal:
            self._replace(standby, self.facts["images"]["target"])
        self.wait_in_sync_standby(standby)
        return f"{standby} at {self.goal} ({time.monotonic() - started:.1f} s)"

    def _version_of(self, address: str) -> str:
        """The node's release; "" when it does not answer (off, deleted, being made)."""
        try:
            return self.apis[address].facts().version
        except NodeUnreachable:
            return ""

    def switchover(self) -> str:
        switch = self.facts.get("switch")
        if switch is None:
            old = self.active()
            switch = {"old": old, "new": self.other(old)}
            self.facts["switch"] = switch
            self.journal.save()
        old, new = switch["old"], switch["new"]
        with ThreadPoolExecutor(1, thread_name_prefix="shutdown") as background:
            shutdown = None
            if not self.facts.get("new_acknowledges"):
                shutdown = self._hand_over(old, new, background)
                self._take_over(new, shutdown)
                # From here on the new release acknowledges writes: no quick rollback.
                self.facts["new_acknowledges"] = True
                self.journal.save()
            self.apis[new].set_op_mode(OPERATION)
            self.record.figures["maintenance_s"] = round(
                time.time() - self.facts.get("maintenance_at", time.time()), 3
            )
            self.journal.save()
            if shutdown is not None:  # its provider's error, if any, fails the step
                self.record.figures["old_active_shutdown_s"] = round(shutdown.result(), 3)
                self.journal.save()
        return f"{new} is the active at {self.goal}, in {OPERATION}; {old} is off"

    def _hand_over(self, old: str, new: str, background: ThreadPoolExecutor) -> Future | None:
        """MAINTENANCE, then the old active's orderly shutdown begun (its engine hands
        the role over to `new` at once, its database stops last; it is left off with
        its disk); None when it is not the active any more (a run taken up again)."""
        api = self.apis[old]
        try:
            if api.facts().role != "ACTIVE":
                return None
        except NodeUnreachable:
            return None
        self.wait_in_sync_standby(new)
        if api.facts().op_mode != MAINTENANCE:
            api.set_op_mode(MAINTENANCE)
            self.facts["maintenance_at"] = time.time()
        # In flight: every transaction not ended, whenever it was accepted.
        in_flight = {tx["id"] for tx in api.call("GET", IN_FLIGHT, params={"in_progress": "true"})}
        seen = {tx["id"] for tx in api.transactions_since(self.record.started_at)}
        self.facts["seen_before_switchover"] = sorted(seen | in_flight)
        self.record.figures["in_flight_at_switchover"] = sorted(in_flight)
        self.journal.save()
        self.progress(f"{old}: orderly shutdown, handing the active role to {new}")
        started = time.monotonic()

        def shut_down() -> float:
            self.nodes.power_off(self.name_of(old), grace=SHUTDOWN_GRACE)
            return time.monotonic() - started

        return background.submit(shut_down)

    def _take_over(self, new: str, shutdown: Future | None) -> None:
        """Wait for `new` the healthy active at the goal, still in MAINTENANCE, while
        the old active shuts down; roll back quickly when it fails."""
        started = time.monotonic()

        def taken() -> NodeFacts | None:
            facts = self.apis[new].facts()
            if facts.role == "FAULT":
                raise StepFailed(f"{new} went FAULT as it took the role: {facts.reason}")
            if facts.role != "ACTIVE" or facts.version != self.goal:
                return None
            if not facts.healthy:
                self.progress(f"{new}: active, not healthy yet ({facts.health_detail})")
                return None
            return facts

        try:
            # Asked often: writes are refused until it is verified.
            facts = wait_for(
                taken, NEW_ACTIVE_BOUND, f"{new} the healthy active at {self.goal}", TAKEOVER_POLL
            )
        except (StepFailed, TimeoutError) as exc:
            if shutdown is not None:
                shutdown.result()  # the old active off before it is powered on again
            self.roll_back_quickly(new, str(exc))
            raise StepFailed(self.record.rollback) from None
        figures = self.record.figures
        figures["switchover_s"] = round(time.monotonic() - started, 3)
        figures["migration"] = facts.schema.get("last_migration")
        after = {tx["id"] for tx in self.apis[new].transactions_since(self.record.started_at)}
        lost = sorted(set(self.facts.get("seen_before_switchover", [])) - after)
        figures["acknowledged_lost"] = len(lost)
        self.journal.save()
        if lost:
            raise StepFailed(f"transactions acknowledged before the switchover are gone: {lost}")

    def roll_back_quickly(self, upgraded: str, why: str) -> None:
        """The old active, off with every acknowledged write on its disk, comes back;
        the upgraded node is redeployed from the old image as its standby."""
        if self.facts.get("new_acknowledges"):
            raise StepFailed(
                f"{upgraded} failed ({why}) after the new release acknowledged writes: a "
                "quick rollback would lose them; roll back in full: escadm upgrade rollback "
                "--pair PAIR --full"
            )
        old = self.other(upgraded)
        self.progress(f"rolling back: {why}")
        try:
            self.nodes.fence(self.name_of(upgraded))
            # The upgraded node marked the old one outdated as it took the role alone,
            # but acknowledged nothing since (MAINTENANCE): its disk is the pair's data.
            self.nodes.clear_outdated(old)
            self.nodes.power_on(self.name_of(old))
        except ProviderError as exc:
            self.journal.end(ROLLED_BACK, f"{why}; the rollback stopped: {exc}")
            raise StepFailed(
                f"the quick rollback could not bring {old} back: {exc}; power it on at its "
                "provider and run escadm upgrade rollback --pair PAIR --quick"
            ) from None
        source = self.record.source
        wait_for(
            lambda: self._is_active(old, source),
            SWITCHOVER_BOUND,
            f"{old} active again at {source}",
        )
        self.apis[old].set_op_mode(OPERATION)
        self._replace(upgraded, self.facts["images"]["source"])
        self.wait_in_sync_standby(upgraded, source)
        self.record.rollback = (
            f"quick rollback: {upgraded} failed as the active at {self.goal} ({why}) before "
            f"it acknowledged any write; {old}, powered off at {source} with every "
            f"acknowledged write on its disk, took the active role back, and {upgraded} "
            f"was redeployed from {self.facts['images']['source']} as its standby"
        )
        self.journal.end(ROLLED_BACK, why)

    def _is_active(self, address: str, version: str) -> bool:
        try:
            facts = self.apis[address].facts()
        except NodeApiError:
            return False
        return facts.role == "ACTIVE" and facts.version == version and facts.healthy

    def replace_old_active(self) -> str:
        started = time.monotonic()
        old = self.facts["switch"]["old"]
        if self._version_of(old) != self.goal:  # "": off since the switchover
            self._replace(old, self.facts["images"]["target"])
        self.wait_in_sync_standby(old)
        return f"{old} at {self.goal} ({time.monotonic() - started:.1f} s)"

    def roll_back_by_request(self) -> None:
        """The operator's quick rollback of this upgrade, where it stands: before the
        switchover the upgraded standby gets the old image back; after it, as when the
        upgraded node fails as the active."""
        switch = self.facts.get("switch")
        source = self.record.source
        if switch is None or self._is_active(switch["old"], source):
            active = self.active()
            standby = self.other(active)
            if self._version_of(standby) != source:
                self._replace(standby, self.facts["images"]["source"])
            self.wait_in_sync_standby(standby, source)
            if self.apis[active].facts().op_mode == MAINTENANCE:  # cut short as it began
                self.apis[active].set_op_mode(OPERATION)
            self.record.rollback = (
                f"quick rollback before the switchover: {standby} was redeployed from "
                f"{self.facts['images']['source']}"
            )
            self.journal.end(ROLLED_BACK, "rolled back by the operator")
            return
        self.roll_back_quickly(switch["new"], "rolled back by the operator")
