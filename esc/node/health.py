"""`escadm health`: the controller's own checks, plus what only the outside can see.

When the API answers, its GET /esc/health reports what the controller itself
sees (database, VIM, engine, notifier); the CLI adds the API and the
services' process records. When it does not answer, the database and the
VIM are checked directly, so the operator still learns what is wrong.
"""

from __future__ import annotations

import httpx

from esc.config import NodeHome, Settings
from esc.health import CheckResult, check_database, check_services, check_vim


def _controller_checks(settings: Settings) -> list[CheckResult] | None:
    from esc.cli.client import api_base_url

    try:
        response = httpx.get(f"{api_base_url(settings)}/esc/health", timeout=2.0)
        body = response.json()
        return [CheckResult(**check) for check in body["checks"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _direct_checks(home: NodeHome, settings: Settings) -> list[CheckResult]:
    from esc.db.session import Database
    from esc.vim.base import load_driver

    db = Database(home.database_url(settings))
    try:
        return [
            check_database(db),
            check_vim(load_driver(settings.vim.driver, home.vim_location(settings))),
        ]
    finally:
        db.dispose()


def node_checks(home: NodeHome, settings: Settings) -> list[CheckResult]:
    controller = _controller_checks(settings)
    if controller is None:
        results = [CheckResult("api", False, f"no answer on port {settings.api.port}")]
        results += _direct_checks(home, settings)
    else:
        results = [CheckResult("api", True, "answering"), *controller]
    # The controller reports the services it sees itself (mona): each check once.
    reported = {r.name for r in results}
    return results + [r for r in check_services(home) if r.name not in reported]
