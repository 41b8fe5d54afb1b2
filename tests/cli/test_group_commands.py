"""Groups run alone show something (`escadm op_mode`: the mode), take --json for the
command after them, and tables are not cut when stdout is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import escadm, escadm_ok

EXAMPLE = Path(__file__).parents[2] / "examples" / "deployment.yaml"


@pytest.mark.slow
def test_groups_alone_json_on_groups_and_uncut_tables(running: Path) -> None:
    home = running
    alone = escadm("op_mode", home=home)
    assert (alone.returncode, alone.stdout) == (0, "Operation Mode = OPERATION\n"), alone.stderr
    assert json.loads(escadm_ok("op_mode", "--json", home=home)) == {"mode": "OPERATION"}
    assert escadm_ok("deployment", home=home) == "No deployments\n"
    assert escadm("log", home=home).returncode == 2  # no look-only default: its usage

    escadm_ok("script", "import", str(EXAMPLE.with_name("servicebooted.sh")), home=home)
    escadm_ok("deployment", "deploy", str(EXAMPLE), home=home)
    assert [
        d["name"] for d in json.loads(escadm_ok("deployment", "--json", "list", home=home))
    ] == ["web"]
    shown = json.loads(escadm_ok("deployment", "--json", "show", "web", home=home))
    ids = [vm["id"] for group in shown["vm_groups"] for vm in group["vms"]]
    assert len(ids) == 3 and all(len(vm_id) >= 32 for vm_id in ids)
    table = escadm_ok("deployment", "show", "web", home=home)  # stdout is a pipe here
    rows = table.splitlines()[2:]  # after the deployment line and the header
    assert sorted(row.split()[-1] for row in rows) == sorted(ids), table
