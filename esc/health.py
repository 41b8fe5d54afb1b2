"""Health checks, defined once for `escadm health` and GET /esc/health.

Each check answers one question an operator asks when something is wrong:
is the database reachable (and its schema one this release runs on), does the API answer,
can the VIM be used, is every service of the node running?
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from esc.config import NodeHome
from esc.node.processes import live_record, service_names

if TYPE_CHECKING:  # the database and VIM modules are imported only by checks that use them
    from esc.db.session import Database
    from esc.vim.base import VimDriver


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_database(db: Database, standby: bool = False) -> CheckResult:
    """`standby`: this node is one of a pair that does not hold the active role, so a
    schema behind this release's is migrated when it takes the role, not wrong now."""
    from sqlalchemy import text

    from esc.db.migrate import schema_fit
    from esc.db.schema_compat import Fit

    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            # A PostgreSQL standby replays the primary's schema: it cannot migrate it.
            if db.backend == "postgresql":
                standby = standby or connection.execute(text("SELECT pg_is_in_recovery()")).scalar()
        state = schema_fit(db.engine)
    except Exception as exc:  # any driver error means "not reachable"
        return CheckResult("database", False, f"cannot query {db.display_url}: {exc}")
    reachable = f"{db.backend} reachable"
    revision, head = state.revision, state.head
    if state.fit is Fit.CURRENT:
        return CheckResult("database", True, f"{reachable}, schema {revision}")
    if state.fit is Fit.AHEAD_COMPATIBLE:
        return CheckResult(
            "database",
            True,
            f"{reachable}, schema {revision} from a newer release, compatible with this one "
            f"(expand-only beyond {head})",
        )
    if state.fit is Fit.AHEAD_INCOMPATIBLE:
        return CheckResult("database", False, state.refusal())
    if standby:
        return CheckResult(
            "database",
            True,
            f"{reachable}, schema at {revision or 'empty'}, this release's is {head}: migrated "
            "when this node takes the active role",
        )
    return CheckResult(
        "database",
        False,
        f"schema at {revision or 'empty'}, expected {head}: restart escmanager to migrate",
    )


def check_vim(vim: VimDriver) -> CheckResult:
    from esc.vim.base import VimError

    try:
        vim.check()
    except VimError as exc:
        return CheckResult("vim", False, str(exc))
    return CheckResult("vim", True, f"{vim.name} VIM usable")


def check_services(home: NodeHome, ha: bool = False) -> list[CheckResult]:
    """Each service of the node (an HA node's when `ha`) running, from its record."""
    results = []
    for name in service_names(ha):
        record = live_record(home.run, name)
        if record:
            results.append(CheckResult(name, True, f"running (pgid {record.pgid})"))
        else:
            results.append(CheckResult(name, False, "not running: escadm start"))
    return results
