"""A real previous release (its kept wheel, in its own venv) hands its node to this one:
by backup and restore, and by `escadm upgrade backup-restore` and back by rollback.

No version string is mocked: the old node runs the code of the artifact in
releases/, the new one this checkout, built as a wheel the way a release is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
from conftest import (
    ESCADM,
    all_rows,
    fast_settings,
    free_port,
    kill_vms,
    live_vm_processes,
    without_local_account,
)
from kept_releases import build_current, kept, previous_release, release_of

from esc.backup.restore import RestoreError, restore
from esc.config import NodeHome
from esc.node.setup import init_node
from esc.release.catalog import load_catalog
from esc.release.numbers import ReleaseNumber
from esc.release.planner import plan_upgrade
from esc.release.procedures import Method
from esc.version import CURRENT

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "deployment.yaml"


def make_venv(path: Path, wheel: Path) -> Path:
    """A venv of its own holding `wheel`; its dependencies are this venv's (same
    packages, read-only), so no download is needed. Returns its escadm."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    site = next((path / "lib").glob("python3.*/site-packages"))
    ours = next(Path(sys.prefix, "lib").glob("python3.*/site-packages"))
    (site / "esc-dependencies.pth").write_text(f"{ours}\n")
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    return path / "bin" / "escadm"


@pytest.fixture(scope="module")
def old_escadm(tmp_path_factory: pytest.TempPathFactory) -> str:
    wheel = previous_release()
    escadm = make_venv(tmp_path_factory.mktemp("old") / "venv", wheel)
    version = run(str(escadm), "version", "--json")
    assert json.loads(version)["full"] == str(release_of(wheel)) != str(CURRENT)
    return str(escadm)


@pytest.fixture(scope="module")
def current_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a release wheel (what scripts/build-release makes)."""
    return build_current(tmp_path_factory.mktemp("wheel"))


def run(escadm: str, *args: str, home: Path | None = None, timeout: float = 300) -> str:
    command = [escadm, *args, *(["--home", str(home)] if home else [])]
    # Not from the checkout: release 1.0.0.2 started its services with `python -m` in the
    # caller's directory, where this checkout's `esc` would shadow its own.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=Path(escadm).parent
    )
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def password_file(home: Path) -> Path:
    """Beside the home, not in it: homes are renamed by an upgrade, passwords restored."""
    return home.with_name(f"{home.name}.admin-password")


def admin(home: Path, password_of: Path | None = None) -> httpx.Client:
    """The REST API of the node in `home`, as admin (the password `init` printed for
    `password_of`, by default for this home)."""
    port = int((home / "esc.toml").read_text().split("port = ")[1].split()[0])
    password = password_file(password_of or home).read_text()
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("admin", password), timeout=10)


def init(escadm: str, home: Path) -> None:
    created = json.loads(run(escadm, "init", "--api-port", str(free_port()), "--json", home=home))
    password_file(home).write_text(created["admin_password"])


def vm_pids(home: Path) -> dict[str, int]:
    """VM id -> pid of its live VNF process."""
    found = {}
    for proc in live_vm_processes(NodeHome(home)):
        line = proc.cmdline()
        found[Path(line[line.index("--instance-dir") + 1]).name] = proc.pid
    return found


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def old_node(tmp_path: Path, old_escadm: str) -> Iterator[Path]:
    """A node of the previous release with the example deployment's three live VMs."""
    home = tmp_path / "node"
    init(old_escadm, home)
    run(old_escadm, "start", home=home)
    try:
        run(old_escadm, "deployment", "deploy", str(EXAMPLE), home=home)
        assert len(vm_pids(home)) == 3
        yield home
    finally:
        for where in (home, tmp_path / "node.rollback", tmp_path / "new"):
            subprocess.run([ESCADM, "stop", "--home", str(where)], capture_output=True)
            subprocess.run([old_escadm, "stop", "--home", str(where)], capture_output=True)
            kill_vms(NodeHome(where))


def history(client: httpx.Client) -> list[tuple[str, str]]:
    return [
        (e["type"], e["message"]) for e in client.get("/v0/events", params={"limit": 1000}).json()
    ]


def test_backup_of_the_previous_release_restores_into_this_one(
    tmp_path: Path, old_escadm: str, old_node: Path
) -> None:
    with admin(old_node) as client:
        before = history(client)
    pids = vm_pids(old_node)
    archive = tmp_path / "db.tar.bz2"
    run(old_escadm, "backup", "--file", str(archive), home=old_node)
    run(old_escadm, "stop", home=old_node)

    # The seed's procedure: a new node of this release with the same VIM, restore, start.
    new = tmp_path / "new"
    init(ESCADM, new)
    config = tomllib.loads((new / "esc.toml").read_text())
    config["vim"]["local_dir"] = str(old_node / "data" / "vim")  # the same VIM: same VMs
    (new / "esc.toml").write_text(tomli_w.dumps(config))
    # Releases before 1.1.0.2 sign no backup: the operator vouches for this one.
    restored = run(
        ESCADM, "restore", "--file", str(archive), "--allow-unsigned", "--json", home=new
    )
    assert json.loads(restored)["source_version"] == str(release_of(previous_release()))
    run(ESCADM, "start", home=new)

    # The users came with the backup: the old node's admin password is the one that works.
    with admin(new, password_of=old_node) as client:
        listed = client.get("/v0/deployments").json()
        assert [(d["tenant"], d["name"], d["status"]) for d in listed] == [
            ("demo", "web", "ACTIVE")
        ]
        assert history(client)[: len(before)] == before  # history intact
        shown = client.get("/v0/tenants/demo/deployments/web").json()
        vms = [vm for group in shown["vm_groups"] for vm in group["vms"]]
        assert {vm["id"] for vm in vms} == set(pids) and all(vm["state"] == "ALIVE" for vm in vms)
        for vm in vms:  # the very same processes, answering
            assert httpx.get(f"{vm['address']}/health", timeout=2).json()["vm_id"] == vm["id"]
        assert vm_pids(old_node) == pids
        # Monitored by the new controller: a VM killed now is recovered by it.
        status = wait(lambda: client.get("/esc/monitoring").json()["status"], 15, "MONA reporting")
        wait(
            lambda: client.get("/esc/monitoring").json()["status"]["watched_vms"] == 3,
            15,
            "3 VMs watched",
        )
        victim = vms[0]["id"]
        os.kill(pids[victim], signal.SIGKILL)
        wait(
            lambda: any(e[0] == "VM_RECOVERY_COMPLETE" for e in history(client)),
            60,
            "the killed VM recovered by the new node",
        )
        assert httpx.get(f"{vms[0]['address']}/health", timeout=2).status_code == 200
        assert status["paused"] is None


def test_upgrade_backup_restore_and_rollback_keep_the_vms_alive(
    tmp_path: Path, old_escadm: str, old_node: Path, current_wheel: Path
) -> None:
    pids = vm_pids(old_node)
    # The new release's venv shares this venv's dependencies (no download in the test).
    venv = tmp_path / f"esc-{CURRENT}"
    make_venv(venv, current_wheel)
    upgraded = run(
        old_escadm,
        "upgrade",
        "backup-restore",
        "--package",
        str(current_wheel),
        "--venv",
        str(venv),
        "--json",
        home=old_node,
        timeout=600,
    )
    record = json.loads(upgraded)
    assert (record["old_version"], record["new_version"]) == (
        str(release_of(previous_release())),
        str(CURRENT),
    )
    assert vm_pids(old_node) == pids  # the VMs never stopped
    with admin(old_node) as client:
        assert client.get("/esc/version").json()["full"] == str(CURRENT)
        assert client.get("/esc/op_mode").json()["mode"] == "OPERATION"
        assert [d["name"] for d in client.get("/v0/deployments").json()] == ["web"]

    rolled = json.loads(run(old_escadm, "upgrade", "rollback", "--json", home=old_node))
    assert rolled["old_version"] == record["old_version"]
    assert vm_pids(old_node) == pids
    with admin(old_node) as client:
        assert client.get("/esc/version").json()["full"] == record["old_version"]
        shown = client.get("/v0/tenants/demo/deployments/web").json()
        assert all(vm["state"] == "ALIVE" for g in shown["vm_groups"] for vm in g["vms"])
    assert (tmp_path / f"node.failed-{CURRENT}").is_dir()


# The archive format each release writes: 1 (JSON rows) up to 1.0, 2 (COPY text) after.
FIRST_COPY_TEXT_RELEASE = ReleaseNumber.parse("1.1.0.1")


@pytest.fixture(scope="module")
def stopped_old_nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """Per kept release older than this one: its escadm and a stopped node of it that ran
    the example deployment (so every table has rows)."""
    nodes = {}
    for release, wheel in sorted(kept().items()):
        if release >= CURRENT:
            continue
        where = tmp_path_factory.mktemp(f"rows-{release}")
        escadm = str(make_venv(where / "venv", wheel))
        home = where / "node"
        init(escadm, home)
        run(escadm, "start", home=home)
        try:
            run(escadm, "deployment", "deploy", str(EXAMPLE), home=home)
        finally:
            run(escadm, "stop", home=home)
            kill_vms(NodeHome(home))
        nodes[str(release)] = (escadm, home)
    return nodes


def restorable(release: ReleaseNumber) -> bool:
    """Whether the planner lets this release restore a backup of `release`."""
    plan = plan_upgrade(load_catalog(None), release, CURRENT, "local", ha=False)
    return plan.allowed and Method.BACKUP_RESTORE in plan.methods


OLDER = [r for r in sorted(kept()) if r < CURRENT]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("release", [str(r) for r in OLDER if restorable(r)])
def test_an_archive_of_an_older_release_restores_row_for_row(
    tmp_path: Path,
    stopped_old_nodes: dict[str, tuple[str, Path]],
    release: str,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """Every kept older release's archive, in the format that release writes (1: JSON
    rows; 2: COPY text), restores into either backend with every value of every column
    the old schema had."""
    old_escadm, old_node = stopped_old_nodes[release]
    archive = tmp_path / "old.tar.gz"
    run(old_escadm, "backup", "--file", str(archive), home=old_node)
    old_home = NodeHome(old_node)
    old_url = old_home.database_url(old_home.load())

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'target.db'}"
    else:
        server = request.getfixturevalue("postgres")
        database = f"esc_{uuid.uuid4().hex[:12]}"
        url = server.create_database(database)
        request.addfinalizer(lambda: server.drop_database(database))
    target = NodeHome(tmp_path / "target")
    settings = fast_settings(url)
    init_node(target, settings)
    result = restore(target, settings, archive, allow_unsigned=True)  # an older release's
    written = 1 if ReleaseNumber.parse(release) < FIRST_COPY_TEXT_RELEASE else 2
    assert result.manifest.format_version == written

    # The restoring node keeps its own escadm account.
    before, after = without_local_account(all_rows(old_url)), without_local_account(all_rows(url))
    assert before["events"], "the old node wrote events"
    # A row the restoring node keeps as its own (0009: the controller's id), whether the
    # old release had one or its migrations add it.
    own = {"controller_settings": {"controller_id"}}
    for table, rows in before.items():
        if table not in ("alembic_version", "schema_compat"):
            old_columns = list(rows[0]) if rows else []
            kept = [r for r in rows if r.get("name") not in own.get(table, ())]
            restored = [r for r in after[table] if r.get("name") not in own.get(table, ())]
            assert [{c: r[c] for c in old_columns} for r in restored] == kept, table
    assert [r["name"] for r in after["controller_settings"] if r["name"] == "controller_id"] == [
        "controller_id"
    ]
    # A column the newer schema added is filled by its migration (0005: event severity).
    assert {e["severity"] for e in after["events"]} <= {"INFO", "ERROR", "CRITICAL"}


@pytest.mark.parametrize("release", [str(r) for r in OLDER if not restorable(r)])
def test_an_archive_of_a_release_too_old_is_refused_naming_the_stepwise_path(
    tmp_path: Path, stopped_old_nodes: dict[str, tuple[str, Path]], release: str
) -> None:
    old_escadm, old_node = stopped_old_nodes[release]
    archive = tmp_path / "old.tar.gz"
    run(old_escadm, "backup", "--file", str(archive), home=old_node)
    target = NodeHome(tmp_path / "target")
    settings = fast_settings(f"sqlite:///{tmp_path / 'target.db'}")
    init_node(target, settings)
    before = all_rows(settings.database.url)
    with pytest.raises(RestoreError, match=rf"upgrade stepwise: {re.escape(release)} → "):
        restore(target, settings, archive, allow_unsigned=True)
    assert all_rows(settings.database.url) == before
