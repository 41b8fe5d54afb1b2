"""What the HA lab tests need from the machine: skipped with the reason outside CI,
failed in CI (`CI=true`), where every one of them must run."""

from __future__ import annotations

import os

import pytest

from esc.ha import keepalived as ka

IN_CI = os.environ.get("CI") == "true"


def need(reason: str | None) -> None:
    """Skip outside CI when the lab cannot run here; in CI that is a failure."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def keepalived_missing() -> str | None:
    """Why Debian's keepalived cannot be run here, None when it can."""
    try:
        ka.find_keepalived()
    except ka.KeepalivedError as exc:
        return str(exc)
    return None
