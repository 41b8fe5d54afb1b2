"""escadm vim as an operator runs it against a running node."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import escadm, escadm_ok


def test_connections_are_added_shown_listed_and_removed(running: Path, tmp_path: Path) -> None:
    listed = escadm_ok("vim", home=running)  # the group alone lists
    assert listed.split() == [
        "NAME",
        "DRIVER",
        "SOURCE",
        "DEPLOYMENTS",
        *["default", "local", "esc.toml", "0"],
    ]

    section = tmp_path / "lab.toml"
    section.write_text('local_dir = "other-vms"\n')
    added = escadm_ok(
        "vim", "add", "lab", "--driver", "local", "--file", str(section), home=running
    )
    assert added.strip() == "VIM connection lab (local) added"
    shown = escadm_ok("vim", "show", "lab", home=running)
    assert "local_dir = 'other-vms'" in shown and "usable: local VIM usable" in shown
    as_json = json.loads(escadm_ok("vim", "list", "--json", home=running))
    assert [(v["name"], v["source"]) for v in as_json] == [
        ("default", "esc.toml"),
        ("lab", "database"),
    ]

    again = escadm("vim", "add", "lab", "--driver", "local", home=running)
    assert again.returncode == 1 and "exists already" in again.stderr
    typo = escadm("vim", "add", "x", "--driver", "local", "--set", "local_dri=y", home=running)
    assert typo.returncode == 1 and "unknown key 'local_dri'" in typo.stderr
    bad = escadm("vim", "add", "x", "--driver", "local", "--set", "novalue", home=running)
    assert bad.returncode == 2 and "write KEY=VALUE" in bad.stderr

    assert escadm_ok("vim", "orphans", home=running).strip() == "No orphans"
    assert escadm_ok("vim", "remove", "lab", home=running).strip() == "VIM connection lab removed"
    gone = escadm("vim", "show", "lab", home=running)
    assert gone.returncode == 1 and "no VIM connection 'lab'" in gone.stderr
