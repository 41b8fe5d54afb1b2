"""Fixtures: a database on each backend, a node home, an in-process controller,
and a real `escadm run` controller process."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import DateTime, MetaData, create_engine, event, select

from esc.api.app import create_app
from esc.config import MonitorSettings, NodeHome, Settings
from esc.engine import callbacks
from esc.engine.controller import Controller
from esc.monitor.mona import run_mona
from esc.node.processes import ProcessRecord, remove_record, write_record
from esc.node.setup import init_node
from esc.security import LOCAL_USER

sys.path.insert(0, str(Path(__file__).parent))
from pg_server import PostgresServer, availability

IN_CI = os.environ.get("CI") == "true"
BACKENDS = ["sqlite", "postgresql"]
ESCADM = str(Path(sys.executable).with_name("escadm"))


# The longest modules, longest first (measured on 2 cores: the failover matrix alone
# takes a third of the suite). They are collected first, and scripts/test keeps
# xdist's module order, so each starts before the short ones: a long module handed
# out last would run alone at the end while the other worker idles.
LONGEST_MODULES = (
    "tests/ha/test_failover.py",
    "tests/upgrade/test_pair_image.py",
    "tests/vim/test_openstack_vim.py",
    "tests/ha/test_ha_node.py",
    "tests/upgrade/test_pair_in_service.py",
    "tests/upgrade/test_previous_release.py",
    "tests/cli/test_monitor_cli.py",
    "tests/api/test_fuzz_openapi.py",
    "tests/ha/test_pair_backup.py",
    "tests/node/test_package_install.py",
    "tests/monitor/test_recovery.py",
    "tests/cli/test_supervisor_restarts.py",
    "tests/cli/test_tls.py",
    "tests/monitor/test_scripts.py",
    "tests/monitor/test_dynamic_mappings.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: n for n, module in enumerate(LONGEST_MODULES)}
    # A stable sort: the other modules keep their order, and so does each module's tests.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def escadm(
    *args: str, home: Path, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess:
    """`escadm ARGS --home HOME` as an operator runs it; check: it must succeed."""
    result = subprocess.run(
        [ESCADM, *args, "--home", str(home)], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, (
            f"escadm {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def escadm_ok(*args: str, home: Path, timeout: float = 120) -> str:
    """The output of an escadm command that must succeed."""
    return escadm(*args, home=home, timeout=timeout, check=True).stdout


def need(reason: str | None) -> None:
    """Skip outside CI when a real component is missing; in CI that is a failure."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    need(availability())
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'esc.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = f"esc_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fast_settings(db_url: str, **overrides: dict) -> Settings:
    """Settings for tests: a free port, quick retries."""
    raw = {
        "node": {"name": "test-node"},
        "api": {"port": free_port()},
        "database": {"url": db_url},
        "notifications": {"initial_backoff": 0.2, "max_backoff": 1.0, "timeout": 2.0},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Settings.model_validate(raw)


def kill_vms(home: NodeHome) -> list[int]:
    """Kill every VNF process of this home's local VIM; returns their pids."""
    marker = str(home.vim_dir)
    killed = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "vnf.py" in cmdline and marker in cmdline:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
    return killed


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A node home made by `escadm init` on a free port; whatever runs in it is
    stopped at teardown, its VMs killed."""
    home = tmp_path / "home"
    assert escadm("init", "--api-port", str(free_port()), home=home).returncode == 0
    yield home
    escadm("stop", home=home)
    kill_vms(NodeHome(home))


@pytest.fixture
def running(home: Path) -> Path:
    """The node of `home`, started in the background (`escadm start`)."""
    assert escadm("start", home=home).returncode == 0
    return home


def live_vm_processes(home: NodeHome) -> list[psutil.Process]:
    marker = str(home.vim_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (
            "vnf.py" in cmdline
            and marker in cmdline
            and proc.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(proc)
    return found


@dataclass
class Node:
    home: NodeHome
    settings: Settings
    admin_password: str

    @property
    def auth(self) -> tuple[str, str]:
        return ("admin", self.admin_password)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api.port}"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests send nothing off this machine: a callback host name other than
    localhost resolves to nothing (no query to the system's resolver)."""

    def resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
        if host != "localhost":
            raise OSError(f"no address for {host} (the tests resolve only localhost)")
        return [ipaddress.IPv4Address("127.0.0.1")]

    monkeypatch.setattr(callbacks, "resolve_host", resolve)


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    """An initialised node home on each backend; its VMs are killed at teardown."""
    home = NodeHome(tmp_path / "home")
    settings = fast_settings(db_url)
    result = init_node(home, settings)
    node = Node(home, settings, result.admin_password or "")
    yield node
    kill_vms(home)


@pytest.fixture
def controller(node: Node) -> Iterator[Controller]:
    controller = Controller(node.home, node.settings)
    controller.start()
    yield controller
    controller.stop(timeout=10)


@pytest.fixture
def api(controller: Controller, node: Node) -> Iterator[TestClient]:
    app = create_app(controller, manage_lifecycle=False)
    token = base64.b64encode(f"admin:{node.admin_password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    with TestClient(app, headers=headers, raise_server_exceptions=False) as client:
        yield client


@contextmanager
def database_down(controller: Controller) -> Iterator[None]:
    """Every new connection of the controller's database refused, as by a server that
    stopped; its pool emptied first, so no request gets one already open."""
    engine = controller.db.engine
    refused = engine.dialect.loaded_dbapi.OperationalError

    def down(*_args: object) -> None:
        raise refused("connection refused: the server is not running")

    engine.dispose()
    event.listen(engine, "do_connect", down)
    try:
        yield
    finally:
        event.remove(engine, "do_connect", down)


def controller_id_of(home: NodeHome, settings: Settings) -> str:
    """The id the node's controller tags its instances with (kept in its database)."""
    from esc.db.session import Database
    from esc.engine.vims import read_controller_id

    db = Database(home.database_url(settings))
    try:
        with db.read() as session:
            found = read_controller_id(session)
    finally:
        db.dispose()
    assert found, "the node's database has no controller id: is its schema migrated?"
    return found


def wait_transaction(client: httpx.Client | TestClient, tx_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        tx = client.get(f"/v0/transactions/{tx_id}").json()
        if tx["state"] in ("SUCCESS", "FAILED"):
            return tx
        if time.monotonic() > deadline:
            raise AssertionError(f"transaction {tx_id} still {tx['state']} after {timeout} s")
        time.sleep(0.1)


class ControllerProcess:
    """`escadm run` as a real OS process, as an operator would start it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        log = open(self.node.home.log / "escadm-run.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [ESCADM, "run", "--home", str(self.node.home.root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"escadm run exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.node.base_url}/esc/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"controller not ready within {timeout} s: {self.output()}")

    def output(self) -> str:
        path = self.node.home.log / "escadm-run.out"
        return path.read_text()[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the controller dies mid-work, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        return self.proc.returncode if self.proc else 0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.node.base_url, auth=self.node.auth, timeout=10)


@pytest.fixture
def controller_process(node: Node) -> Iterator[ControllerProcess]:
    process = ControllerProcess(node)
    yield process
    process.kill()


def copy_example(tmp_path: Path) -> Path:
    source = Path(__file__).parents[1] / "examples" / "deployment.yaml"
    target = tmp_path / "deployment.yaml"
    shutil.copy(source, target)
    return target


def slow_boot_descriptor(name: str, boot: float, tenant: str = "ops") -> str:
    """One VM that answers its health check only after `boot` seconds, so a
    transaction stays in flight for about that long."""
    return f"""
tenant: {tenant}
deployment:
  name: {name}
  vm_groups:
    - {{name: g, image: "slow-boot:{boot}", flavor: m1.tiny, bootup_time: 30}}
"""


# MONA in a thread of the test, beside the in-process controller ---------------

# Quick refreshes so a test sees pauses and resumes within a fraction of a second.
TEST_MONITOR = MonitorSettings(refresh_interval=0.2, probe_timeout=0.5)


class MonaThread:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=run_mona,
            args=(self.controller.db, TEST_MONITOR, self.controller.home.run, self._stop),
            name="mona-under-test",
            daemon=True,
        )
        self._thread.start()
        # Recorded as `escadm run` records it: MONA in this process.
        write_record(self.controller.home.run, ProcessRecord.of("mona", os.getpid()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "MONA did not stop within 10 s"
        remove_record(self.controller.home.run, "mona")


@pytest.fixture
def mona(controller: Controller) -> Iterator[MonaThread]:
    thread = MonaThread(controller)
    thread.start()
    yield thread
    thread.stop()


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def events(api: TestClient, *types: str) -> list[dict]:
    found = api.get("/v0/events", params={"limit": 1000}).json()
    return [e for e in found if not types or e["type"] in types]


def recoveries(api: TestClient) -> list[dict]:
    txs = api.get("/v0/transactions", params={"limit": 1000}).json()
    return [t for t in txs if t["operation"] == "VM_RECOVER"]


def monitored_descriptor(
    name: str,
    actions: list[str] = ("FALSE recover autohealing",),  # type: ignore[assignment]
    *,
    image: str = "healthy",
    metric: str = "ICMPPing",
    poll: float = 0.4,
    occurrences_false: int = 2,
    policy: str = "REBOOT_THEN_REDEPLOY",
    retries: int = 3,
    wait: float = 2.0,
    count: int = 1,
) -> str:
    """One vm_group (tenant `mon`) with a VM_ALIVE KPI and one rule of `actions`."""
    import json

    return f"""
tenant: mon
deployment:
  name: {name}
  vm_groups:
    - name: g
      image: "{image}"
      flavor: m1.tiny
      bootup_time: 10
      recovery_wait_time: {wait}
      recovery_policy: {{action_on_recovery: {policy}, max_retries: {retries}}}
      scaling: {{min_active: {count}, max_active: {count}}}
      kpis:
        - event_name: VM_ALIVE
          metric_collector: {{type: {json.dumps(metric)}, poll_frequency: {poll}}}
          metric_occurrences_true: 1
          metric_occurrences_false: {occurrences_false}
      rules:
        - event_name: VM_ALIVE
          actions: {json.dumps(list(actions))}
"""


# Every row of every table ---------------------------------------------------------

Rows = dict[str, list[dict[str, Any]]]


def _plain(value: Any) -> Any:
    """Backend-neutral: timestamps as aware UTC (SQLite keeps them naive)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def all_rows(url: str) -> Rows:
    """Every table as the database has it (reflected), rows ordered by primary key."""
    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        found: Rows = {}
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                names = [c.name for c in table.columns]
                moments = [i for i, c in enumerate(table.columns) if isinstance(c.type, DateTime)]
                rows = []
                for row in connection.execute(select(table)):
                    values = list(row)
                    for i in moments:
                        values[i] = _plain(values[i])
                    rows.append(dict(zip(names, values, strict=True)))
                keys = [c.name for c in (table.primary_key.columns or table.columns)]
                found[table.name] = sorted(rows, key=lambda r, k=keys: [r[c] for c in k])
        return found
    finally:
        engine.dispose()


def without_local_account(rows: Rows) -> Rows:
    copy = dict(rows)
    copy["users"] = [r for r in rows["users"] if r["name"] != LOCAL_USER]
    return copy
