"""The node API of each node of a running pair, asked at the node's own address as an
upgrade's orchestrator asks it: its role, replication in drbdadm's words, whether it
holds the VIP; and a package install refused on the active node. One pair of two
network-namespace hosts in 198.18.80.0/24, each node with its own local VIM.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from esc_pair import API_PORT, Pair
from needs import running_pair

from esc.version import CURRENT

NET = "198.18.80"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "na"

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    yield from running_pair(f"{NET}.0/24", PREFIX, kad_vri=80, vim_host=False, keep_env="NA_KEEP")


def node_api(pair: Pair, address: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{address}:{API_PORT}",
        auth=("admin", pair.password),
        timeout=10,
        trust_env=False,
    )


def test_each_node_tells_its_role_replication_and_vip(pair: Pair) -> None:
    active = pair.active()
    standby = pair.other(active)
    facts = {}
    for node in (active, standby):
        with node_api(pair, node.address) as client:
            response = client.get("/esc/node")
            health = client.get("/esc/health")
        assert response.status_code == 200, response.text
        facts[node.name] = response.json()
        assert facts[node.name]["node"] == node.name
        assert facts[node.name]["address"] == node.address
        assert facts[node.name]["version"] == str(CURRENT)
        schema = facts[node.name]["schema"]
        assert schema["revision"] == schema["head"] and schema["error"] is None
        assert facts[node.name]["vip"]["address"] == pair.vip
        assert facts[node.name]["health"]["passed"] is (health.status_code == 200)
        assert facts[node.name]["health"]["checks"] == health.json()["checks"]

    on_active, on_standby = facts[active.name], facts[standby.name]
    assert (on_active["role"], on_standby["role"]) == ("ACTIVE", "STANDBY")
    assert (on_active["vip"]["held"], on_standby["vip"]["held"]) == (True, False)
    primary, secondary = on_active["replication"], on_standby["replication"]
    assert (primary["role"], secondary["role"]) == ("Primary", "Secondary")
    assert primary["uptodate"] is True and primary["error"] is None, primary
    assert primary["peer"]["address"] == standby.address
    assert primary["peer"]["connection"] == "Connected"
    assert primary["peer"]["sync_state"] == "sync" and primary["peer"]["disk"] == "UpToDate"
    assert primary["peer"]["lag_seconds"] is not None and primary["wal_lsn"]
    assert secondary["disk"] == "UpToDate" and secondary["peer"]["address"] == active.address
    for fact in (on_active, on_standby):
        assert fact["op_mode"] == {"mode": "OPERATION", "error": None}
        assert fact["transactions"] == {"queued": 0, "in_progress": 0, "error": None}


def test_an_install_is_refused_on_the_active_node_only(pair: Pair) -> None:
    active = pair.active()
    with node_api(pair, active.address) as client:
        refused = client.post("/esc/node/package/install", json={"version": "9.9.9.9"})
    assert refused.status_code == 409, refused.text
    assert "switch over first" in refused.json()["detail"]
    with node_api(pair, pair.other(active).address) as client:
        absent = client.post("/esc/node/package/install", json={"version": "9.9.9.9"})
        assert client.get("/esc/node/package/install").json()["state"] == "idle"
    assert absent.status_code == 404 and "upload it first" in absent.json()["detail"]
