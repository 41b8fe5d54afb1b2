"""escadm upgrade plan: human and JSON outputs, exit codes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import ESCADM

SEED = str(Path(__file__).with_name("seed_catalog.toml"))


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ESCADM, "upgrade", "plan", "--catalog", SEED, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_allowed_plan_is_numbered_steps() -> None:
    result = plan("--from", "5.4.0.88", "--to", "5.5.0", "--vim", "openstack", "--ha")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "Upgrade 5.4.0.88 → 5.5.0 on openstack (HA pair): allowed (minor change)"
    assert "Method 1: Backup and Restore upgrade" in lines
    assert "Method 2: In-service upgrade of the HA pair, image method" in lines
    assert "    1. escadm health on every node: ESC HEALTH PASSED" in lines
    assert any("nova delete <vm>" in line for line in lines)
    for section in ("Prechecks:", "Steps:", "Verification:", "Rollback:"):
        assert f"  {section}" in lines


def test_refused_plan_names_reason_and_next_step() -> None:
    result = plan("--from", "5.2", "--to", "5.5.0", "--vim", "vmware")
    assert result.returncode == 3
    assert result.stdout.splitlines() == [
        "Upgrade 5.2 → 5.5.0 on vmware: REFUSED",
        "Reason: 5.5 does not accept a direct upgrade from 5.2 on vmware (it accepts 5.4, 5.3)",
        "Next step: upgrade stepwise: 5.2 → 5.4.0.100 → 5.5.0",
    ]


def test_json_is_the_same_plan_as_data() -> None:
    allowed = json.loads(plan("--from", "3.1.0.116", "--to", "3.1.0.150", "--json").stdout)
    assert allowed["allowed"] and allowed["change"] == "patch"
    assert [m["method"] for m in allowed["methods"]] == ["package", "backup_restore"]
    assert allowed["methods"][0]["steps"] == [
        "escadm stop",
        "install the 3.1.0.150 package",
        "escadm start",
    ]
    refused = plan("--from", "5.5", "--to", "5.4.0.88", "--json")
    assert refused.returncode == 3
    data = json.loads(refused.stdout)
    assert not data["allowed"] and data["change"] == "downgrade" and data["methods"] == []
    assert "roll back" in data["next_step"]


def test_default_source_is_the_installed_release() -> None:
    from esc import __version__

    result = subprocess.run(
        [ESCADM, "upgrade", "plan", "--to", __version__, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert json.loads(result.stdout)["source"] == __version__


def test_bad_input_is_exit_2() -> None:
    bad_number = plan("--to", "5.x")
    assert bad_number.returncode == 2 and "not a release number" in bad_number.stderr
    missing = subprocess.run(
        [ESCADM, "upgrade", "plan", "--to", "5.5", "--catalog", "/nonexistent.toml"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "cannot read catalog" in missing.stderr
    bad_vim = plan("--to", "5.5.0", "--vim", "azure")
    assert bad_vim.returncode == 2
