"""`escadm upgrade in-service --pair PAIR`: plan, pre-check, run or continue, report.

The planner decides the method (package between patch builds of one maintenance
release; image across releases) from the TARGET's catalog, read from its package:
a newer release knows which sources it accepts. A recorded upgrade not finished is
continued rather than started again; a finished one's record is kept beside the new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esc.release.numbers import ReleaseNumber
from esc.release.planner import Plan, plan_upgrade
from esc.release.procedures import Method
from esc.upgrade.backup_restore import UpgradeError, wheel_catalog
from esc.upgrade.in_service import (
    METHOD_PACKAGE,
    Upgrade,
    check_resumable,
    new_record_steps,
)
from esc.upgrade.journal import IN_PROGRESS, Journal, Record, UpgradeLock
from esc.upgrade.node_api import NodeApi, NodeApiError, NodeFacts
from esc.upgrade.pair_access import PairAccess
from esc.upgrade.pair_checks import Check, pair_checks
from esc.upgrade.release_files import ReleasePackage, find_package

METHODS = {METHOD_PACKAGE: Method.IN_SERVICE_PACKAGE, "image": Method.IN_SERVICE_IMAGE}
# What each step of the package method costs, for --dry-run: seconds as measured on a
# lab pair (bench/bench_upgrade.py), and the effect on the pair's service.
PACKAGE_EXPECTATIONS = {
    "upload": (2, "none"),
    "upgrade_standby": (
        20,
        "the pair has no standby meanwhile: the active commits alone (its standby is "
        "marked outdated at the node provider), writes go on",
    ),
    "switchover": (
        1,
        "writes are refused for well under a second while the role moves; clients retry "
        "(escadm does by itself); transactions in flight are resumed on the new active",
    ),
    "upgrade_old_active": (20, "the pair has no standby meanwhile, as above"),
    "verify": (2, "none"),
}


class Refused(Exception):
    """Nothing was changed: the planner or a pre-check refused; the message says why."""

    def __init__(self, message: str, checks: list[Check] | None = None) -> None:
        super().__init__(message)
        self.checks = checks or []


@dataclass
class Outcome:
    record: Record
    checks: list[Check] = field(default_factory=list)
    resumed: bool = False


def state_dir_of(access: PairAccess, given: Path | None) -> Path:
    return given if given is not None else access.base / f"{access.pair.name}.upgrade"


def gather_facts(access: PairAccess) -> tuple[dict[str, NodeFacts], NodeFacts | None, str]:
    """Each node's facts, and the VIP's; a node that does not answer is a refusal."""
    facts: dict[str, NodeFacts] = {}
    for node in access.pair.node:
        with NodeApi(access.pair.url(node.address), access.auth, access.verify) as api:
            try:
                facts[node.address] = api.facts()
            except NodeApiError as exc:
                raise Refused(
                    f"node {node.name} ({node.address}) cannot be asked: {exc}; every node "
                    "must answer its API with the pair's admin credentials"
                ) from None
    with NodeApi(access.pair.vip_url, access.auth, access.verify) as vip:
        try:
            return facts, vip.facts(), ""
        except NodeApiError as exc:
            return facts, None, str(exc)


def choose_method(plan: Plan, asked: str | None) -> str:
    """The method to run: the one asked, else the planner's first in-service one."""
    if not plan.allowed:
        raise Refused(f"the upgrade planner refuses it: {plan.reason}; next: {plan.next_step}")
    offered = [name for name, method in METHODS.items() if method in plan.methods]
    chosen = asked or (offered[0] if offered else None)
    if chosen is None:
        raise Refused(
            f"the planner offers no in-service method for {plan.source} → {plan.target} "
            f"(it offers {', '.join(m.value for m in plan.methods)})"
        )
    if chosen not in offered:
        why = (
            "a package upgrade is only between patch builds of one maintenance release"
            if chosen == METHOD_PACKAGE
            else "an image upgrade is not offered for this pair"
        )
        raise Refused(
            f"--method {chosen} does not apply to {plan.source} → {plan.target}: {why}; "
            f"the planner offers {', '.join(offered) or 'no in-service method'}"
        )
    if chosen != METHOD_PACKAGE:
        raise Refused(
            f"{plan.source} → {plan.target} is an upgrade by image, which this escadm does "
            "not run in one command: follow `escadm upgrade plan --ha` with the escadm node "
            "commands (docs/upgrade.md)"
        )
    return chosen


def dry_run_steps() -> list[dict[str, Any]]:
    return [
        {
            "step": step.name,
            "title": step.title,
            "expected_s": PACKAGE_EXPECTATIONS[step.name][0],
            "effect": PACKAGE_EXPECTATIONS[step.name][1],
        }
        for step in new_record_steps()
    ]


def run_in_service(
    access: PairAccess,
    target: ReleaseNumber,
    releases: Path,
    method: str | None,
    state_dir: Path | None,
    progress: Callable[[str], None],
    dry_run: bool = False,
) -> Outcome:
    directory = state_dir_of(access, state_dir)
    with UpgradeLock(directory):
        recorded = Journal.read(directory)
        if recorded is not None and recorded.state == IN_PROGRESS:
            refusal = check_resumable(recorded, method or recorded.method, target)
            if refusal:
                raise Refused(refusal)
            if dry_run:
                return Outcome(recorded, resumed=True)
            return _continue(access, directory, recorded, releases, progress)
        package = find_package(releases, target)
        facts, vip, vip_error = gather_facts(access)
        sources = sorted({f.version for f in facts.values()})
        source = ReleaseNumber.parse(sources[0])
        plan = plan_upgrade(wheel_catalog(package.path), source, target, access.pair.vim, True)
        chosen = choose_method(plan, method)
        checks = pair_checks(facts, vip, vip_error, str(source), package.size)
        source_package = _source_package(releases, source, checks)
        failing = [c for c in checks if not c.ok]
        if failing:
            raise Refused(
                "pre-checks failed, nothing was changed: "
                + "; ".join(
                    f"{c.name}: {c.detail}" + (f" ({c.fix})" if c.fix else "") for c in failing
                ),
                checks,
            )
        standby = next(f.address for f in facts.values() if f.role == "STANDBY")
        active = next(f.address for f in facts.values() if f.role == "ACTIVE")
        if dry_run:
            record = Record(
                id="dry-run",
                pair=access.pair.name,
                method=chosen,
                source=str(source),
                target=str(target),
                started_at=0.0,
                steps=new_record_steps(),
                facts={"first": standby, "second": active},
            )
            return Outcome(record, checks)
        journal = Journal.new(
            directory, access.pair.name, chosen, str(source), str(target), new_record_steps()
        )
        journal.record.facts.update(
            {
                "first": standby,
                "second": active,
                "versions_before": {a: f.version for a, f in facts.items()},
            }
        )
        journal.save()
        upgrade = Upgrade(access, journal, package, source_package, progress)
        return Outcome(upgrade.run(), checks)


def _source_package(
    releases: Path, source: ReleaseNumber, checks: list[Check]
) -> ReleasePackage | None:
    """The release the pair runs: a rollback gives it back to an upgraded node."""
    try:
        package = find_package(releases, source)
    except UpgradeError as exc:
        checks.append(
            Check(
                f"the package of {source} (for a rollback)",
                False,
                str(exc),
                "a rollback reinstalls it: put it in the releases directory",
            )
        )
        return None  # the failed check refuses the upgrade
    checks.append(Check(f"the package of {source} (for a rollback)", True, str(package.path)))
    return package


def _continue(
    access: PairAccess,
    directory: Path,
    record: Record,
    releases: Path,
    progress: Callable[[str], None],
) -> Outcome:
    journal = Journal(directory, record)
    record.resumed += 1
    journal.save()
    package = find_package(releases, ReleaseNumber.parse(record.target))
    source = find_package(releases, ReleaseNumber.parse(record.source))
    progress(f"continuing the upgrade recorded in {journal.path}")
    return Outcome(Upgrade(access, journal, package, source, progress).run(), resumed=True)


METHOD_ROLLBACK = "package-rollback"


def run_rollback(
    access: PairAccess,
    releases: Path,
    state_dir: Path | None,
    progress: Callable[[str], None],
    full: bool = False,
) -> Outcome:
    """Bring the pair back to the release it ran before its last upgrade, node by node,
    standby first (a node already there is left alone), as an upgrade runs; a rollback
    cut short is continued by running it again."""
    directory = state_dir_of(access, state_dir)
    with UpgradeLock(directory):
        recorded = Journal.read(directory)
        if recorded is None:
            raise Refused(f"no upgrade of the pair {access.pair.name} is recorded in {directory}")
        if recorded.method == METHOD_ROLLBACK:
            if recorded.state != IN_PROGRESS:
                raise Refused(
                    f"the pair was rolled back to {recorded.target} already (record "
                    f"{recorded.id}); nothing to roll back"
                )
            journal = Journal(directory, recorded)
            recorded.resumed += 1
            journal.save()
        else:
            if full:
                raise Refused(
                    "--full: a package upgrade between patch builds keeps the schema and the "
                    "data as they are, so its rollback gives each node its old package back "
                    "and restores nothing; run without --full"
                )
            journal = Journal.new(
                directory,
                access.pair.name,
                METHOD_ROLLBACK,
                recorded.target,
                recorded.source,
                new_record_steps(),
            )
            journal.record.facts["rolls_back"] = recorded.id
            journal.save()
        package = find_package(releases, ReleaseNumber.parse(journal.record.target))
        upgrade = Upgrade(access, journal, package, None, progress, rolling_back=True)
        return Outcome(upgrade.run(), resumed=recorded.method == METHOD_ROLLBACK)
