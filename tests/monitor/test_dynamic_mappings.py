"""dynamic_mappings.xml: validated with line and element named, stored in the DB,
changed at run time, and a refused file leaves the mappings in force unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ESCADM, free_port
from fastapi.testclient import TestClient

from esc.monitor.mappings import DEFAULTS, parse_mappings

CUSTOM = b"""<?xml version="1.0"?>
<dynamic_mappings>
  <actions>
    <action>
      <name>TRUE notify-noc.sh</name>
      <type>SCRIPT</type>
      <metaData><type>script</type><properties>
        <property><name>script_filename</name><value>notify-noc.sh</value></property>
      </properties></metaData>
    </action>
  </actions>
  <metrics>
    <metric>
      <name>ICMPPing</name>
      <type>MONITOR_SUCCESS_FAILURE</type>
      <metaData><type>icmp_ping</type></metaData>
    </metric>
  </metrics>
</dynamic_mappings>
"""

MALFORMED = {
    "unknown type": (
        CUSTOM.replace(b"<type>SCRIPT</type>", b"<type>TELEPORT</type>"),
        "line 6, <type>: action type 'TELEPORT' is not one of",
    ),
    "missing name": (
        CUSTOM.replace(b"<name>ICMPPing</name>", b""),
        "line 13, <metric>: missing <name>",
    ),
    "not well-formed": (CUSTOM.replace(b"</actions>", b""), "line 19: not well-formed XML"),
    "wrong root": (b"<mappings/>", "line 1, <mappings>: the root element must be"),
    "entities": (
        b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;">]>\n<dynamic_mappings>&b;</dynamic_mappings>',
        "a DOCTYPE is not allowed",
    ),
    "external entity": (
        b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM '
        b'"file:///etc/passwd">]>\n<dynamic_mappings>&x;</dynamic_mappings>',
        "a DOCTYPE is not allowed",
    ),
    "duplicate": (
        CUSTOM.replace(
            b"</actions>",
            CUSTOM[CUSTOM.index(b"<action>") : CUSTOM.index(b"</actions>")] + b"</actions>",
        ),
        "action 'TRUE notify-noc.sh' defined twice",
    ),
}


def put(api: TestClient, body: bytes):
    return api.put(
        "/v0/dynamic_mappings", content=body, headers={"content-type": "application/xml"}
    )


def test_defaults_are_in_force_after_start(api: TestClient) -> None:
    exported = api.get("/v0/dynamic_mappings")
    assert exported.headers["content-type"].startswith("application/xml")
    assert parse_mappings(exported.content) == parse_mappings(DEFAULTS.read_bytes())


def test_import_takes_effect_without_restart_and_round_trips(api: TestClient) -> None:
    assert put(api, CUSTOM).json() == {"actions": 1, "metrics": 1}
    assert parse_mappings(api.get("/v0/dynamic_mappings").content) == parse_mappings(CUSTOM)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_refused_and_nothing_changes(api: TestClient, case: str) -> None:
    put(api, CUSTOM)
    before = api.get("/v0/dynamic_mappings").content
    body, expected = MALFORMED[case]
    response = put(api, body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert expected in response.json()["detail"]
    assert api.get("/v0/dynamic_mappings").content == before


@pytest.mark.slow
def test_cli_import_export_show(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def escadm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [ESCADM, *args, "--home", str(home)], capture_output=True, text=True, timeout=60
        )

    escadm("init", "--api-port", str(free_port()))
    assert escadm("start").returncode == 0
    try:
        custom = tmp_path / "custom.xml"
        custom.write_bytes(CUSTOM)
        imported = escadm("dynamic_mapping", "import", str(custom))
        assert imported.stdout == "dynamic mappings in force: 1 actions, 1 metrics\n"
        shown = escadm("dynamic_mapping", "show").stdout.splitlines()
        assert shown == [
            "action  SCRIPT                   TRUE notify-noc.sh",
            "metric  MONITOR_SUCCESS_FAILURE  ICMPPing",
        ]
        out = tmp_path / "out.xml"
        assert escadm("dynamic_mapping", "export", str(out)).returncode == 0
        assert parse_mappings(out.read_bytes()) == parse_mappings(CUSTOM)
        bad = tmp_path / "bad.xml"
        bad.write_bytes(MALFORMED["unknown type"][0])
        refused = escadm("dynamic_mapping", "import", str(bad))
        assert refused.returncode == 1 and "line 6, <type>" in refused.stderr
        assert escadm("dynamic_mapping", "show").stdout.splitlines() == shown
        missing = escadm("dynamic_mapping", "import", str(tmp_path / "nope.xml"))
        assert missing.returncode == 2 and "cannot read" in missing.stderr
    finally:
        escadm("stop")
