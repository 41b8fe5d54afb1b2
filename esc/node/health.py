"""`escadm health`: the controller's own checks, plus what only the outside can see.

When the API answers, its GET /esc/health reports what the controller itself
sees (database, VIM, engine, notifier); the CLI adds the API and the
services' process records. When it does not answer, the database and the
VIM are checked directly, so the operator still learns what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from esc.config import NodeHome, Settings, api_base_url
from esc.health import CheckResult, check_database, check_services, check_vim
from esc.tls import TlsError, certificate_problem, client_verify, trusted_ca


def _controller_checks(
    home: NodeHome, settings: Settings, ca: Path | None
) -> list[CheckResult] | str:
    """The controller's own checks, else why the API could not be asked."""
    url = api_base_url(settings)
    try:
        verify = client_verify(home, settings, ca)
        response = httpx.get(f"{url}/esc/health", timeout=2.0, verify=verify)
        body = response.json()
        return [CheckResult(**check) for check in body["checks"]]
    except TlsError as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        refused = certificate_problem(exc, url, trusted_ca(home, settings, ca))
        return refused or f"no answer on port {settings.api.port}"
    except (ValueError, KeyError, TypeError):
        return f"no answer on port {settings.api.port}"


def _direct_checks(home: NodeHome, settings: Settings) -> list[CheckResult]:
    from esc.db.session import Database
    from esc.vim.base import driver_for

    db = Database(home.database_url(settings))
    try:
        return [
            # Not answering: an HA node migrates its schema when it takes the active role.
            check_database(db, standby=settings.ha.enabled),
            check_vim(driver_for(home, settings)),
        ]
    finally:
        db.dispose()


def node_checks(home: NodeHome, settings: Settings, ca: Path | None = None) -> list[CheckResult]:
    controller = _controller_checks(home, settings, ca)
    if isinstance(controller, str):
        results = [CheckResult("api", False, controller)]
        results += _direct_checks(home, settings)
    else:
        results = [CheckResult("api", True, "answering"), *controller]
    # The controller reports the services it sees itself (mona): each check once.
    reported = {r.name for r in results}
    return results + [
        r for r in check_services(home, settings.ha.enabled) if r.name not in reported
    ]
