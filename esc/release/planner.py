"""The upgrade planner: may this node go from one release to another, and how?

Every upgrade and restore command asks it before acting. The policy (seed):
- a package upgrade in place only between patch builds of one
  MAJOR.MINOR.MAINTENANCE; any other change needs a new image;
- a direct upgrade only from the trains the target train accepts for that
  VIM (ESC: the two preceding); older sources get the shortest stepwise path
  through catalog releases, each hop itself a direct, allowed upgrade;
- a downgrade is never an upgrade: rollback is;
- in-service upgrade needs an HA pair.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from esc.release.catalog import VIMS, Catalog
from esc.release.numbers import Change, ReleaseNumber, classify
from esc.release.procedures import Method, procedure


@dataclass(frozen=True)
class Plan:
    source: str
    target: str
    vim: str
    ha: bool
    change: Change
    allowed: bool
    methods: list[Method] = field(default_factory=list)
    reason: str = ""
    next_step: str = ""
    path: list[str] = field(default_factory=list)  # stepwise hops when direct is refused

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "vim": self.vim,
            "ha": self.ha,
            "change": self.change.value,
            "allowed": self.allowed,
            "methods": [
                {"method": m.value, **procedure(m, self.vim, self.target)} for m in self.methods
            ],
            "reason": self.reason,
            "next_step": self.next_step,
            "path": self.path,
        }


def _image_methods(
    catalog: Catalog, source_train: str, target_train: str, vim: str, ha: bool
) -> list[Method]:
    """Image-based methods for a direct upgrade between two trains."""
    if source_train == target_train:  # a maintenance change within one train
        return [Method.BACKUP_RESTORE] + ([Method.IN_SERVICE_IMAGE] if ha else [])
    train = catalog.find_train(target_train)
    accepts = train.accepts.get(vim) if train else None
    if accepts is None:
        return []
    methods = []
    if source_train in accepts.backup_restore:
        methods.append(Method.BACKUP_RESTORE)
    if ha and source_train in accepts.in_service:
        methods.append(Method.IN_SERVICE_IMAGE)
    return methods


def shortest_path(
    catalog: Catalog, source: ReleaseNumber, target: ReleaseNumber, vim: str, ha: bool
) -> list[str] | None:
    """Fewest hops from source to target, each hop a direct allowed upgrade; the
    intermediate hops are the latest release of their train. None if there is none."""
    start, goal = source.train, target.train
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        if current == goal:
            break
        for train in reversed(catalog.train):  # newest first: prefer newer hops among equals
            if train.name in previous or ReleaseNumber.parse(train.name) <= ReleaseNumber.parse(
                current
            ):
                continue
            if ReleaseNumber.parse(train.name) > ReleaseNumber.parse(goal):
                continue
            if _image_methods(catalog, current, train.name, vim, ha):
                previous[train.name] = current
                queue.append(train.name)
    if goal not in previous:
        return None
    trains = []
    node: str | None = goal
    while node is not None:
        trains.append(node)
        node = previous[node]
    trains.reverse()
    hops = [str(catalog.find_train(t).latest) for t in trains[1:-1]]
    return [str(source), *hops, str(target)]


def plan_upgrade(
    catalog: Catalog, source: ReleaseNumber, target: ReleaseNumber, vim: str, ha: bool
) -> Plan:
    base = {
        "source": str(source),
        "target": str(target),
        "vim": vim,
        "ha": ha,
        "change": classify(source, target),
    }
    change = base["change"]

    def refuse(reason: str, next_step: str, path: list[str] | None = None) -> Plan:
        return Plan(**base, allowed=False, reason=reason, next_step=next_step, path=path or [])

    if vim not in VIMS:
        return refuse(f"unknown VIM {vim!r}", f"use one of {', '.join(VIMS)}")
    if change is Change.SAME:
        return refuse(f"the node already runs {source}", "nothing to upgrade")
    if change is Change.DOWNGRADE:
        return refuse(
            f"{target} is older than {source}: a downgrade is never an upgrade",
            "to go back, roll back: escadm upgrade rollback (or restore the backup "
            "taken before the upgrade on the old release)",
        )
    if not catalog.knows(target):
        return refuse(
            f"{target} is not a release of the catalog",
            "check the number, or pass the new release's catalog with --catalog",
        )
    if change is Change.PATCH:
        package = Method.IN_SERVICE_PACKAGE if ha else Method.PACKAGE
        return Plan(**base, allowed=True, methods=[package, Method.BACKUP_RESTORE])
    target_train = catalog.find_train(target.train)
    if vim not in target_train.accepts:
        return refuse(
            f"train {target_train.name} does not support the {vim} VIM",
            f"supported VIMs: {', '.join(sorted(target_train.accepts)) or 'none'}",
        )
    methods = _image_methods(catalog, source.train, target.train, vim, ha)
    if methods:
        return Plan(**base, allowed=True, methods=methods)
    accepts = target_train.accepts[vim]
    accepted = sorted(
        set(accepts.backup_restore + (accepts.in_service if ha else [])),
        key=ReleaseNumber.parse,
        reverse=True,
    )
    reason = (
        f"{target.train} does not accept a direct upgrade from {source.train} on {vim} "
        f"(it accepts {', '.join(accepted) or 'no older train'})"
    )
    path = shortest_path(catalog, source, target, vim, ha)
    if path:
        return refuse(reason, "upgrade stepwise: " + " → ".join(path), path)
    return refuse(
        reason,
        "no stepwise path through the catalog's releases: redeploy "
        f"{target} and move the deployments by hand",
    )
