"""The in-service upgrade of an HA pair by image, from the previous train's kept
release to this checkout, across its schema migrations.

The lab's host agent deploys the pair from the kept release's image (each node a
namespace made by its first boot, the VNFs on a VIM host of their own). Then
`escadm upgrade in-service --method image` of this checkout, over the nodes' API and
the agent alone:

- forced to fail: a stray table in the pair's database makes the schema migration
  fail on the upgraded node as it takes the active role; it goes FAULT, and the
  orchestrator rolls back by itself, quickly (the old active, powered off with its
  disk, comes back; the upgraded node is redeployed from the old image), losing no
  acknowledged write;
- then for real, under a steady write load through the VIP with deploys in flight
  at the switchover: no failed request, no write done twice, none lost, the deploys
  SUCCESS on the new active, the VMs deployed before untouched, both nodes at this
  release, healthy;
- on a pair deployed again from the old image, the orchestrator SIGKILLed in each
  step and run again: the upgrade completes, nothing acknowledged lost.

Root, PostgreSQL and keepalived needed; in 198.18.83.0/24.
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
from deployed_pair import DeployedPair, wait_for
from esc_pair import ESCADM
from kept_releases import build_current, previous_train_release, release_of, releases_dir
from lab import Lab, availability
from needs import keepalived_missing, need, pg_availability
from writes import WriteLoad

from esc.upgrade.image_method import image_name
from esc.version import CURRENT

NET = "198.18.83"
PREFIX = "im"
UPGRADE_BOUND = 1200  # seconds; two node deploys and a switchover

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(2400)]

KEPT = """
tenant: kept
deployment:
  name: before
  vm_groups:
    - name: g
      image: healthy
      flavor: m1.tiny
      scaling: {min_active: 2, max_active: 2}
"""
SLOW = """
tenant: inflight
deployment:
  name: NAME
  vm_groups:
    - name: g
      image: 'slow-boot:60'
      flavor: m1.tiny
      bootup_time: 180
      scaling: {min_active: 2, max_active: 2}
"""


@pytest.fixture(scope="module")
def source() -> Path:
    return previous_train_release()


@pytest.fixture(scope="module")
def releases(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    current = build_current(tmp_path_factory.mktemp("wheel"))
    return releases_dir(tmp_path_factory.mktemp("releases"), source, current)


@pytest.fixture(scope="module")
def pair(source: Path, releases: Path) -> Iterator[DeployedPair]:
    need(availability())
    need(pg_availability())
    need(keepalived_missing())
    with Lab(1, net=f"{NET}.0/24", prefix=PREFIX) as lab:
        assert lab.dir is not None
        lab.dir.chmod(0o711)
        made = DeployedPair(lab, releases, image_name(str(release_of(source))), kad_vri=83)
        try:
            made.start()
            made.deploy()
            yield made
        finally:
            made.stop()


@pytest.fixture(scope="module")
def access(pair: DeployedPair) -> Path:
    return pair.access_file("lab")


def upgrade(access: Path, releases: Path, *args: str) -> subprocess.Popen:
    command = [ESCADM, "upgrade", "in-service", "--pair", str(access), "--to", str(CURRENT)]
    command += ["--method", "image", "--releases", str(releases), "--yes", "--json", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal(access: Path) -> dict:
    try:
        return json.loads((access.with_name("lab.upgrade") / "journal.json").read_text())
    except (OSError, ValueError):
        return {}


def step_state(access: Path, name: str) -> str:
    steps = journal(access).get("steps", [])
    return next((s["state"] for s in steps if s["name"] == name), "")


def deploy(pair: DeployedPair, text: str) -> str:
    with pair.client() as client:
        accepted = client.post(
            "/v0/deployments", content=text, headers={"content-type": "application/yaml"}
        )
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["transaction_id"]


def wait_tx(pair: DeployedPair, tx_id: str, timeout: float) -> dict:
    def ended() -> dict | None:
        with pair.client() as client:
            tx = client.get(f"/v0/transactions/{tx_id}").json()
        return tx if tx["state"] in ("SUCCESS", "FAILED") else None

    return wait_for(ended, timeout, f"transaction {tx_id} ends\n{pair.logs()}")


def psql(pair: DeployedPair, sql: str) -> None:
    """SQL on the active's PostgreSQL, over its socket, as the node's services reach it."""
    active = next(i for i, role in enumerate(pair.roles().values()) if role == "ACTIVE")
    home = pair.home(active)
    code = (
        "import sys, tomllib, sqlalchemy as sa; "
        "url = tomllib.load(open(sys.argv[1], 'rb'))['database']['url']; "
        "engine = sa.create_engine(url); "
        "conn = engine.connect(); conn.execute(sa.text(sys.argv[2])); conn.commit()"
    )
    python = pair.nodes_dir / pair.names[active] / "venv" / "bin" / "python"
    command = ["ip", "netns", "exec", pair.names[active], str(python), "-P", "-c", code]
    done = subprocess.run(
        [*command, str(home / "esc.toml"), sql], capture_output=True, text=True, cwd="/"
    )
    assert done.returncode == 0, done.stderr


def test_a_dry_run_names_the_image_steps_and_the_migrations_and_changes_nothing(
    pair: DeployedPair, access: Path, releases: Path
) -> None:
    run = upgrade(access, releases, "--dry-run")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, f"{out}{err}"
    plan = json.loads(out)
    assert plan["method"] == "image" and plan["target"] == str(CURRENT)
    assert all(c["ok"] for c in plan["checks"]), plan["checks"]
    (schema,) = [c for c in plan["checks"] if c["name"] == "schema migrations online"]
    assert "applied at the switchover" in schema["detail"], schema
    assert [s["step"] for s in plan["steps"]] == [
        "prepare",
        "replace_standby",
        "switchover",
        "replace_old_active",
        "verify",
    ]
    assert journal(access) == {}


def test_an_upgraded_node_that_fails_as_the_active_is_rolled_back_quickly(
    pair: DeployedPair, access: Path, releases: Path, source: Path
) -> None:
    old = str(release_of(source))
    # What the new release's first migration creates, there already: its migration
    # fails as the upgraded node takes the active role.
    psql(pair, "CREATE TABLE vim_connections (stray integer)")
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="qr", retry_for=120)
    load.start()
    try:
        load.wait_acks(30, 60)
        run = upgrade(access, releases)
        out, err = run.communicate(timeout=UPGRADE_BOUND)
        time.sleep(1.0)
    finally:
        load.stop()
    assert run.returncode == 4, f"exit {run.returncode}\n{out}\n{err}\n{pair.logs()}"
    report = json.loads(out)
    print(f"\nrollback: {report['rollback']}")
    assert report["state"] == "rolled_back"
    assert report["rollback"].startswith("quick rollback"), report["rollback"]
    assert "vim_connections" in report["rollback"], report["rollback"]
    assert load.failures == 0, load.failed
    assert load.conflicts == []
    acked = {load.name(a.seq) for a in load.acks}
    assert acked <= pair.tenants(), f"lost: {sorted(acked - pair.tenants())[:10]}"
    pair.wait_pair()
    assert set(pair.versions().values()) == {old}
    psql(pair, "DROP TABLE vim_connections")


def test_the_pair_is_upgraded_by_image_under_load_with_deploys_in_flight_and_nothing_lost(
    pair: DeployedPair, access: Path, releases: Path, source: Path
) -> None:
    kept = wait_tx(pair, deploy(pair, KEPT), 180)
    assert kept["state"] == "SUCCESS", json.dumps(kept)
    pids_before = pair.vm_pids()
    assert len(pids_before) == 2
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="im", retry_for=120)
    load.start()
    in_flight: list[str] = []
    try:
        load.wait_acks(30, 60)
        run = upgrade(access, releases)
        wait_for(
            lambda: step_state(access, "replace_standby") == "running" or run.poll() is not None,
            120,
            "the standby's replacement starts",
        )
        in_flight = [deploy(pair, SLOW.replace("NAME", f"slow{i}")) for i in (1, 2)]
        out, err = run.communicate(timeout=UPGRADE_BOUND)
        time.sleep(1.0)
    finally:
        load.stop()
    assert run.returncode == 0, f"exit {run.returncode}\n{out}\n{err}\n{pair.logs()}"
    report = json.loads(out)
    print(f"\nreport: {json.dumps({k: v for k, v in report.items() if k != 'steps'})}")
    print("steps: " + ", ".join(f"{s['name']} {s['seconds']} s" for s in report["steps"]))
    print(f"load: {len(load.acks)} acks, {load.retries} retries, {load.failures} failed")

    assert load.failures == 0, load.failed
    assert load.conflicts == []
    acked = {load.name(a.seq) for a in load.acks}
    assert acked <= pair.tenants(), f"lost: {sorted(acked - pair.tenants())[:10]}"
    assert set(report["in_flight_at_switchover"]) & set(in_flight), report
    for tx_id in in_flight:
        assert wait_tx(pair, tx_id, 300)["state"] == "SUCCESS"
    assert report["acknowledged_lost"] == 0
    assert report["state"] == "completed" and report["rollback"] == "none"
    assert pids_before <= pair.vm_pids()
    assert set(report["versions_before"].values()) == {str(release_of(source))}
    assert set(report["versions_after"].values()) == {str(CURRENT)}
    pair.wait_pair()
    assert set(pair.versions().values()) == {str(CURRENT)}


def _kill_in(access: Path, run: subprocess.Popen, step: str, timeout: float = 600) -> None:
    """SIGKILL the orchestrator while `step` runs (the record is read every millisecond:
    the shortest step, prepare, takes some)."""
    deadline = time.monotonic() + timeout
    while step_state(access, step) != "running":
        assert run.poll() is None, f"the upgrade ended before {step}: {run.communicate()}"
        assert time.monotonic() < deadline, f"{step} did not start within {timeout} s"
        time.sleep(0.001)
    run.kill()
    run.wait(10)


def test_an_orchestrator_killed_in_each_step_is_continued_to_the_end(
    pair: DeployedPair, releases: Path, source: Path
) -> None:
    pair.redeploy()
    access = pair.access_file("lab")
    load = WriteLoad(pair.api_url, ("admin", pair.password), prefix="kl", retry_for=120)
    load.start()
    steps = ["prepare", "replace_standby", "switchover", "replace_old_active", "verify"]
    try:
        load.wait_acks(30, 60)
        for step in steps:
            _kill_in(access, upgrade(access, releases), step)
        run = upgrade(access, releases)
        out, err = run.communicate(timeout=UPGRADE_BOUND)
        time.sleep(1.0)
    finally:
        load.stop()
    assert run.returncode == 0, f"{out}{err}\n{pair.logs()}"
    report = json.loads(out)
    assert report["state"] == "completed" and report["resumed"] == len(steps)
    assert set(report["versions_after"].values()) == {str(CURRENT)}
    assert load.failures == 0, load.failed
    acked = {load.name(a.seq) for a in load.acks}
    assert acked <= pair.tenants(), f"lost: {sorted(acked - pair.tenants())[:10]}"
    pair.wait_pair()
    assert set(pair.versions().values()) == {str(CURRENT)}
