"""Backup and restore of a running HA pair, as an operator does them.

`escadm backup` on either node (the standby's from its read-only hot standby) gives
the same content; `escadm restore` is refused on the standby, and on the active it
replaces the pair's data while the pair runs: the active keeps the VIP, its engine
pauses for the swap only, and the standby gets the restored data through streaming
replication with nothing done on it. One pair of two network-namespace hosts, each
node with its own local VIM.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from esc_pair import API_PORT, Pair, wait_for
from needs import running_pair

from esc.config import NodeHome
from esc.ha.pgsql import Cluster

NET = "198.18.63"  # this module's /24 inside 198.18.0.0/15, apart from other labs
PREFIX = "br"
# The active node's state, not the pair's content: the lease is renewed and the
# executors beat every moment, and a restore keeps the pair's own (see esc.db.aside).
VOLATILE = {"active_lease", "owners"}

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    yield from running_pair(f"{NET}.0/24", PREFIX, kad_vri=68, vim_host=False, keep_env="BR_KEEP")


def _tenants_at(pair: Pair, address: str) -> set[str]:
    """What a node's own API reads (a standby answers reads)."""
    with httpx.Client(
        base_url=f"http://{address}:{API_PORT}",
        auth=("admin", pair.password),
        timeout=10,
        trust_env=False,
    ) as client:
        response = client.get("/v0/tenants")
        response.raise_for_status()
        return {t["name"] for t in response.json()}


def _add_tenant(pair: Pair, name: str) -> None:
    with pair.client() as client:
        response = client.post("/v0/tenants", json={"name": name})
        assert response.status_code in (200, 201), response.text


def _in_postgresql(pair: Pair, node, query: str) -> list[tuple]:
    """Asked of the node's own PostgreSQL over its socket, not through ESC."""
    home = NodeHome(node.home)
    with Cluster(home, home.load().ha).connect(dbname="esc") as conn:
        return conn.execute(query).fetchall()


def _backup(pair: Pair, node, path: Path) -> dict:
    return json.loads(pair.ok(node, "backup", "--file", str(path), "--json"))


class _VipWatch:
    """Who holds the VIP, sampled while something runs: it must never move."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.seen: set[tuple[str, ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.add(
                tuple(
                    node.name
                    for node in self.pair.nodes
                    if any(str(a.ip) == self.pair.vip for a in self.pair.lab.addresses(node.ns))
                )
            )

    def __enter__(self) -> _VipWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_pair_is_backed_up_on_either_node_and_restored_on_the_active(pair: Pair) -> None:
    active, standby = pair.nodes  # the first node started takes the VIP
    assert pair.active() is active
    for name in ("kept-1", "kept-2"):
        _add_tenant(pair, name)
    # Synchronous commit waits for the standby's flush, not its replay: read it there.
    wait_for(
        lambda: {"kept-1", "kept-2"} <= _tenants_at(pair, standby.address),
        10,
        "the standby's API shows the writes",
    )

    started = time.monotonic()
    on_standby = _backup(pair, standby, pair.base / "standby.tar.gz")
    on_active = _backup(pair, active, pair.base / "active.tar.gz")
    backups_s = time.monotonic() - started
    assert on_standby["manifest"]["source_node"] == "n2"
    digests = [
        {t: e["sha256"] for t, e in b["manifest"]["tables"].items() if t not in VOLATILE}
        for b in (on_standby, on_active)
    ]
    assert digests[0] == digests[1], "the two nodes' backups hold different content"
    before = _in_postgresql(pair, active, "SELECT epoch FROM active_lease")[0][0]

    _add_tenant(pair, "after-backup")
    wait_for(
        lambda: "after-backup" in _tenants_at(pair, standby.address),
        10,
        "the standby's API shows the later write",
    )

    # On the standby: refused, naming the active, and nothing changed.
    archive = str(pair.base / "standby.tar.gz")
    refused = pair.escadm(standby, "restore", "--file", archive)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is the standby of the pair, not its active" in refused.stderr
    assert f"run escadm restore on the active node n1 ({active.address})" in refused.stderr
    assert "after-backup" in pair.tenants()

    # On the active, with the standby's archive: the VIP stays where it is throughout.
    started = time.monotonic()
    with _VipWatch(pair) as watch:
        restored = pair.ok(active, "restore", "--file", archive, timeout=180)
    restore_s = time.monotonic() - started
    assert watch.seen == {("n1",)}, f"the VIP moved during the restore: {watch.seen}"
    assert "the active node n1 runs on the restored data" in restored, restored

    expected = {"kept-1", "kept-2"}
    assert expected <= pair.tenants() and "after-backup" not in pair.tenants()
    shown = _tenants_at(pair, standby.address)
    assert expected <= shown and "after-backup" not in shown
    for node in (standby, active):
        names = {r[0] for r in _in_postgresql(pair, node, "SELECT name FROM tenants")}
        assert expected <= names and "after-backup" not in names, (node.name, names)
        kept = _in_postgresql(
            pair, node, "SELECT 1 FROM pg_namespace WHERE nspname = 'esc_before_restore'"
        )
        assert kept, f"{node.name} has no schema esc_before_restore"
    # The pair's lease goes on from its own epoch, not the backup's.
    after = _in_postgresql(pair, standby, "SELECT epoch FROM active_lease")[0][0]
    assert after > before

    pair.ok(standby, "replication", "status", "--wait-uptodate", "--timeout", "60")
    pair.wait_pair(active=active, timeout=60)
    print(f"\nboth backups {backups_s:.1f} s; escadm restore on the active {restore_s:.1f} s")
    print(restored.strip().splitlines()[-1])
    _add_tenant(pair, "after-restore")  # the engine and the API take writes again
    assert "after-restore" in pair.tenants()

    # And the pair still hands the role over.
    pair.ok(active, "switchover", timeout=90)
    pair.wait_pair(active=standby, timeout=90)
    assert {"kept-1", "after-restore"} <= pair.tenants()
