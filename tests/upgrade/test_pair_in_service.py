"""The in-service upgrade of an HA pair by package, from a kept release to this one.

A lab pair (two network-namespace hosts, keepalived's VIP, the lab's node provider, a
VIM host of its own on a third host) runs the newest kept patch build of this
checkout's maintenance release, each node from a venv of its own holding that wheel.
`escadm upgrade in-service` of this checkout upgrades it to this checkout's wheel over
the nodes' API alone, while a client writes through the VIP every 10 ms (retrying
with an Idempotency-Key, as escadm does) and two deploys are in flight at the
switchover. Then: no failed request, no write done twice, no acknowledged write lost,
the deploys SUCCESS on the new active, the VMs deployed before untouched, both nodes
at the new release and healthy.

Root, PostgreSQL and keepalived needed; in 198.18.81.0/24.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ha"))
from esc_pair import ESCADM, Pair
from kept_releases import build_current, previous_patch_build, releases_dir
from needs import need, running_pair
from pair_upgrades import (
    KEPT,
    deploy,
    journal,
    kill_in,
    slow,
    upgrade,
    upgraded_under_load,
    wait_tx,
)
from writes import WriteLoad

from esc.upgrade.pair_access import load_pair
from esc.upgrade.vip_probe import VipProbe
from esc.version import CURRENT

NET = "198.18.81"
PREFIX = "ui"
UPGRADE_BOUND = 900  # seconds; a whole upgrade took ~1 min on an idle 2-core machine

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def source() -> Path:
    found = previous_patch_build()
    need(
        None
        if found
        else f"releases/ holds no earlier patch build of {'.'.join(map(str, CURRENT.parts[:3]))}"
    )
    assert found is not None
    return found


@pytest.fixture(scope="module")
def releases(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    current = build_current(tmp_path_factory.mktemp("wheel"))
    return releases_dir(tmp_path_factory.mktemp("releases"), source, current)


@pytest.fixture(scope="module")
def pair(source: Path) -> Iterator[Pair]:
    yield from running_pair(
        f"{NET}.0/24", PREFIX, kad_vri=80, vim_host=True, keep_env="UI_KEEP", wheel=source
    )


@pytest.fixture(scope="module")
def pair_file(pair: Pair) -> Path:
    return pair.access_file("lab")


def vm_pids(pair: Pair) -> set[int]:
    assert pair.vim_host is not None
    return {p for p in pair.lab.pids(pair.vim_ns) if p != pair.vim_host.pid}


def test_a_dry_run_prints_the_steps_and_changes_nothing(
    pair: Pair, pair_file: Path, releases: Path
) -> None:
    run = upgrade(pair_file, releases, "--dry-run")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, f"{out}{err}"
    plan = json.loads(out)
    assert plan["method"] == "package" and plan["target"] == str(CURRENT)
    assert all(c["ok"] for c in plan["checks"]), plan["checks"]
    assert [s["step"] for s in plan["steps"]] == [
        "upload",
        "upgrade_standby",
        "switchover",
        "upgrade_old_active",
        "verify",
    ]
    assert all(s["expected_s"] > 0 and s["effect"] for s in plan["steps"])
    assert journal(pair_file) == {}


def test_a_method_that_does_not_apply_is_refused_with_the_planners_reason(
    pair: Pair, pair_file: Path, releases: Path
) -> None:
    run = upgrade(pair_file, releases, "--method", "image", "--dry-run")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 3, f"{out}{err}"
    assert "--method image" in err


def test_the_pair_is_upgraded_under_load_with_deploys_in_flight_and_nothing_lost(
    pair: Pair, pair_file: Path, releases: Path, source: Path
) -> None:
    kept_tx = deploy(pair, KEPT)
    assert wait_tx(pair, kept_tx, 120)["state"] == "SUCCESS"
    pids_before = vm_pids(pair)
    assert len(pids_before) == 2

    report, _load, _in_flight = upgraded_under_load(
        pair, lambda: upgrade(pair_file, releases), pair_file, "upgrade_standby", 45, UPGRADE_BOUND
    )
    # The VMs deployed before were not touched: the same processes.
    assert pids_before <= vm_pids(pair)

    # Both nodes run this release, healthy, one active and one standby in sync.
    assert set(report["versions_before"].values()) == {source.name.split("-")[1]}
    for node in pair.nodes:
        version = json.loads(pair.ok(node, "version", "--json"))
        assert version["full"] == str(CURRENT)
        assert pair.ok(node, "health").strip() == "ESC HEALTH PASSED"
    pair.wait_pair(active=pair.active())

    status = subprocess.run(
        [ESCADM, "upgrade", "status", "--pair", str(pair_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "completed"


def test_the_upgrade_rolls_back_node_by_node_to_the_old_release(
    pair: Pair, pair_file: Path, releases: Path, source: Path
) -> None:
    old = source.name.split("-")[1]
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="rb", retry_for=30)
    load.start()
    try:
        load.wait_acks(30, 60)
        rollback = subprocess.run(
            [ESCADM, "upgrade", "rollback", "--json", *rollback_options(pair_file, releases)],
            capture_output=True,
            text=True,
            timeout=UPGRADE_BOUND,
        )
        time.sleep(1.0)
    finally:
        load.stop()
    assert rollback.returncode == 0, f"{rollback.stdout}{rollback.stderr}\n{pair.logs()}"
    report = json.loads(rollback.stdout)
    assert report["state"] == "rolled_back" and report["target"] == old
    assert set(report["versions_after"].values()) == {old}
    assert load.failures == 0 and load.conflicts == []
    acked = {load.name(a.seq) for a in load.acks}
    assert acked <= pair.tenants()
    for node in pair.nodes:
        assert json.loads(pair.ok(node, "version", "--json"))["full"] == old
    again = subprocess.run(
        [ESCADM, "upgrade", "rollback", *rollback_options(pair_file, releases)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 3 and "rolled back to" in again.stderr


def rollback_options(pair_file: Path, releases: Path) -> list[str]:
    return ["--pair", str(pair_file), "--releases", str(releases)]


def test_an_orchestrator_killed_in_each_step_is_continued_to_the_end(
    pair: Pair, pair_file: Path, releases: Path
) -> None:
    killed = []
    with VipProbe(load_pair(str(pair_file))) as probe:
        run = upgrade(pair_file, releases)
        kill_in(pair_file, run, "upload")
        killed.append("upload")
        status = subprocess.run(
            [ESCADM, "upgrade", "status", "--pair", str(pair_file), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 1, status.stdout + status.stderr
        shown = json.loads(status.stdout)
        assert [s["state"] for s in shown["steps"]][:2] == ["running", "pending"]
        # Deploys in flight at the switchover make the last step wait for them.
        in_flight = [deploy(pair, slow(f"kill{i}", 45)) for i in (1, 2)]
        for step in ("upgrade_standby", "switchover", "upgrade_old_active", "verify"):
            run = upgrade(pair_file, releases)
            kill_in(pair_file, run, step)
            killed.append(step)
        run = upgrade(pair_file, releases)
        out, err = run.communicate(timeout=UPGRADE_BOUND)
    assert run.returncode == 0, f"{out}{err}\n{pair.logs()}"
    report = json.loads(out)
    assert killed == ["upload", "upgrade_standby", "switchover", "upgrade_old_active", "verify"]
    assert report["state"] == "completed" and report["resumed"] == 5
    assert set(report["versions_after"].values()) == {str(CURRENT)}
    for tx_id in in_flight:
        assert wait_tx(pair, tx_id, 240)["state"] == "SUCCESS"
    # Never without an active for longer than a switchover takes.
    assert probe.longest < 5.0, [g.seconds for g in probe.gaps]
    pair.wait_pair(active=pair.active())
