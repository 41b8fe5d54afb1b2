"""`escadm upgrade in-service --pair PAIR`: plan, pre-check, run or continue, report.

The planner decides the method (package between patch builds of one maintenance
release; image across releases) from the TARGET's catalog, read from its package:
a newer release knows which sources it accepts. A recorded upgrade not finished is
continued rather than started again; a finished one's record is kept beside the new.
The package method is esc.upgrade.in_service, the image method esc.upgrade.image_method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esc.ha.provider import NodeProvider, ProviderError
from esc.release.numbers import ReleaseNumber
from esc.release.planner import Plan, plan_upgrade
from esc.release.procedures import Method
from esc.upgrade.backup_restore import UpgradeError, wheel_catalog
from esc.upgrade.image_method import (
    METHOD_IMAGE,
    ImageUpgrade,
    image_name,
    new_image_steps,
)
from esc.upgrade.in_service import (
    METHOD_PACKAGE,
    StepFailed,
    Upgrade,
    check_resumable,
    new_record_steps,
)
from esc.upgrade.journal import IN_PROGRESS, ROLLED_BACK, Journal, Record, UpgradeLock
from esc.upgrade.node_api import NodeApi, NodeApiError, NodeFacts
from esc.upgrade.node_replace import recorded_parameters
from esc.upgrade.pair_access import PairAccess, PairAccessError
from esc.upgrade.pair_checks import Check, pair_checks
from esc.upgrade.release_files import ReleasePackage, find_package
from esc.upgrade.schema_path import schema_path, wheel_head

METHODS = {METHOD_PACKAGE: Method.IN_SERVICE_PACKAGE, METHOD_IMAGE: Method.IN_SERVICE_IMAGE}
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
# The image method's, as measured likewise.
IMAGE_EXPECTATIONS = {
    "prepare": (1, "none"),
    "replace_standby": (
        40,
        "the standby is deleted and deployed again from the new image, then copies the "
        "active's data; the active commits alone meanwhile, writes go on",
    ),
    "switchover": (
        3,
        "MAINTENANCE: writes are refused (clients retry; escadm does by itself) while the "
        "old active hands the role over and shuts down, the new one migrates the schema "
        "and is verified; transactions in flight are resumed there",
    ),
    "replace_old_active": (40, "the old active is redeployed; the pair has no standby meanwhile"),
    "verify": (2, "none"),
}
EXPECTATIONS = {METHOD_PACKAGE: PACKAGE_EXPECTATIONS, METHOD_IMAGE: IMAGE_EXPECTATIONS}


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
    return chosen


def steps_of(method: str) -> list:
    return new_record_steps() if method == METHOD_PACKAGE else new_image_steps()


def dry_run_steps(method: str = METHOD_PACKAGE) -> list[dict[str, Any]]:
    expected = EXPECTATIONS[method]
    return [
        {
            "step": step.name,
            "title": step.title,
            "expected_s": expected[step.name][0],
            "effect": expected[step.name][1],
        }
        for step in steps_of(method)
    ]


def run_in_service(
    access: PairAccess,
    target: ReleaseNumber,
    releases: Path,
    method: str | None,
    state_dir: Path | None,
    progress: Callable[[str], None],
    dry_run: bool = False,
    image: str = "",
) -> Outcome:
    """`image`: the image of the target at the node provider (image method; default
    esc-TARGET)."""
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
        checks = pair_checks(
            facts, vip, vip_error, str(source), package.size, node_api=chosen == METHOD_PACKAGE
        )
        source_package = _source_package(releases, source, checks)
        checks.append(_schema_check(package, source_package, facts))
        images: dict[str, str] = {}
        provider = None
        if chosen == METHOD_IMAGE:
            provider, images = _image_checks(
                access, directory, image or image_name(str(target)), checks
            )
        failing = [c for c in checks if not c.ok]
        if failing:
            if provider is not None:
                provider.close()
            raise Refused(
                "pre-checks failed, nothing was changed: "
                + "; ".join(
                    f"{c.name}: {c.detail}" + (f" ({c.fix})" if c.fix else "") for c in failing
                ),
                checks,
            )
        standby = next(f.address for f in facts.values() if f.role == "STANDBY")
        active = next(f.address for f in facts.values() if f.role == "ACTIVE")
        first = {"first": standby, "second": active}
        if dry_run:
            if provider is not None:
                provider.close()
            record = Record(
                id="dry-run",
                pair=access.pair.name,
                method=chosen,
                source=str(source),
                target=str(target),
                started_at=0.0,
                steps=steps_of(chosen),
                facts={**first, "images": images},
            )
            return Outcome(record, checks)
        journal = Journal.new(
            directory, access.pair.name, chosen, str(source), str(target), steps_of(chosen)
        )
        journal.record.facts.update(
            {**first, "versions_before": {a: f.version for a, f in facts.items()}}
        )
        if images:
            journal.record.facts["images"] = images
        journal.save()
        upgrade = _upgrade_of(access, journal, package, source_package, progress, provider)
        return Outcome(upgrade.run(), checks)


def _upgrade_of(
    access: PairAccess,
    journal: Journal,
    package: ReleasePackage,
    source_package: ReleasePackage | None,
    progress: Callable[[str], None],
    provider: NodeProvider | None,
) -> Upgrade:
    """The orchestrator of the record's method."""
    if journal.record.method != METHOD_IMAGE:
        return Upgrade(access, journal, package, source_package, progress)
    if provider is None:
        provider = access.node_provider(journal.directory / "nodes")
    return ImageUpgrade(
        access,
        journal,
        package,
        source_package,
        progress,
        provider=provider,
        ha_pair=access.ha_pair_text(),
    )


def _schema_check(
    package: ReleasePackage, source_package: ReleasePackage | None, facts: dict[str, NodeFacts]
) -> Check:
    """Whether the target's migrations from the pair's schema can run in service."""
    name = "schema migrations online"
    reported = {f.schema.get("revision") for f in facts.values() if f.schema.get("revision")}
    try:
        if reported:
            current = sorted(reported)[0]
        elif source_package is not None:
            current = wheel_head(source_package.path)  # an older release at its head
        else:
            return Check(name, False, "the pair's schema revision is not known", "")
        path = schema_path(package.path, current)
    except UpgradeError as exc:
        return Check(name, False, str(exc), "use the release's verified wheel")
    applied = f"; applied at the switchover: {', '.join(path.revisions)}" if path.revisions else ""
    return Check(name, path.allowed, path.reason + applied, path.next_step)


def _image_checks(
    access: PairAccess, directory: Path, target_image: str, checks: list[Check]
) -> tuple[NodeProvider | None, dict[str, str]]:
    """The node provider reachable, each node known to it with its parameters, the
    pair file readable: what replacing the nodes needs."""
    try:
        provider = access.node_provider(directory / "nodes")
        access.ha_pair_text()
    except (PairAccessError, ProviderError) as exc:
        checks.append(Check("the node provider and the pair file", False, str(exc)))
        return None, {}
    try:
        provider.check()
        sources = {
            n.name: recorded_parameters(provider, n.name, n.parameters)["image"]
            for n in access.pair.node
        }
    except ProviderError as exc:
        checks.append(
            Check(
                "each node known to its provider",
                False,
                str(exc),
                "the pair access file's node names must be the nodes' names at the provider",
            )
        )
        return provider, {}
    images = sorted(set(sources.values()))
    checks.append(
        Check(
            "each node known to its provider",
            len(images) == 1,
            ", ".join(f"{name} from {image}" for name, image in sources.items()),
            "both nodes must be made from one image before an upgrade by image",
        )
    )
    checks.append(
        Check(
            "the target's image",
            target_image not in images,
            f"{target_image}" + (" (the nodes' own already)" if target_image in images else ""),
            "name the target release's image with --image",
        )
    )
    return provider, {"source": images[0], "target": target_image}


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
    upgrade = _upgrade_of(access, journal, package, source, progress, None)
    return Outcome(upgrade.run(), resumed=True)


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
        if recorded.method == METHOD_IMAGE:
            return _roll_back_image(access, directory, recorded, releases, progress, full)
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


def _roll_back_image(
    access: PairAccess,
    directory: Path,
    record: Record,
    releases: Path,
    progress: Callable[[str], None],
    full: bool,
) -> Outcome:
    """The quick rollback of an upgrade by image, while the new release has
    acknowledged no write: the old active, off with its disk, comes back."""
    if record.state == ROLLED_BACK:
        raise Refused(f"the upgrade {record.id} was rolled back already: {record.rollback}")
    if full or record.facts.get("new_acknowledges"):
        raise Refused(
            f"the upgrade by image {record.source} → {record.target} "
            + (
                "has the new release acknowledging writes, which a quick rollback would lose"
                if record.facts.get("new_acknowledges")
                else "is asked to roll back in full"
            )
            + ": that needs a full rollback (the old image redeployed, a backup taken "
            "before the switchover restored), which this escadm does not run"
        )
    journal = Journal(directory, record)
    record.resumed += 1
    journal.save()
    package = find_package(releases, ReleaseNumber.parse(record.target))
    source = find_package(releases, ReleaseNumber.parse(record.source))
    upgrade = _upgrade_of(access, journal, package, source, progress, None)
    assert isinstance(upgrade, ImageUpgrade)
    try:
        upgrade.roll_back_by_request()
    except (NodeApiError, ProviderError, TimeoutError) as exc:
        raise StepFailed(
            f"the quick rollback stopped: {exc}; the record is {journal.path}: fix the "
            "cause and run the same command again"
        ) from None
    finally:
        upgrade.close()
    return Outcome(record, resumed=True)
