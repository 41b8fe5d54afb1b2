"""The node's own PostgreSQL as one of an HA pair: two real PostgreSQL 15 clusters on
loopback (127.0.0.1 and 127.0.0.2, each its own port), cloned, streaming
synchronously, promoted, rewound and re-cloned; the status in drbdadm's words."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from click.testing import CliRunner, Result
from conftest import need
from pg_server import availability

from esc.cli.main import cli
from esc.cli.replication import drbdadm_command
from esc.config import NodeHome, Settings
from esc.ha.pgsql import PG_BIN, PG_USER, STOP_SIGNAL, Cluster, Endpoint, PgsqlError
from esc.ha.replication import read_status, wait_uptodate

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

DRBDADM = str(Path(sys.executable).with_name("drbdadm"))
A, B = "127.0.0.1", "127.0.0.2"


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _settings(address: str, port: int, enabled: bool = True) -> Settings:
    return Settings.model_validate(
        {
            "node": {"name": f"node-{address}"},
            "ha": {
                "enabled": enabled,
                "node_list": [A, B],
                "address": address,
                "kad_vip": "127.0.0.100/24",
                "gateway_ip": "127.0.0.254",
                "pg_port": port,
            },
        }
    )


@dataclass
class Node:
    cluster: Cluster
    endpoint: Endpoint

    @property
    def home(self) -> Path:
        return self.cluster.home.root


def _make_node(base: Path, name: str, address: str) -> Node:
    home = NodeHome(base / name)
    home.root.mkdir()
    settings = _settings(address, _free_port(address))
    home.save(settings)
    return Node(Cluster(home, settings.ha, durable=False), Endpoint(address, settings.ha.pg_port))


def _wait_for(check: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def _query(node: Node, query: str, dbname: str = "postgres") -> list[tuple]:
    with node.cluster.connect(dbname) as conn:
        return conn.execute(query).fetchall()


def _write(node: Node, value: str) -> None:
    """A committed row on `node`; a commit that waits for an absent standby fails
    (statement_timeout) instead of hanging the test."""
    with node.cluster.connect("esc") as conn:
        conn.execute("SET statement_timeout = '5s'")
        conn.execute("CREATE TABLE IF NOT EXISTS probe (value text)")
        conn.execute("INSERT INTO probe VALUES (%s)", (value,))


def _values(node: Node) -> set[str]:
    return {row[0] for row in _query(node, "SELECT value FROM probe", "esc")}


@dataclass
class Pair:
    primary: Node
    standby: Node

    def swap(self) -> None:
        self.primary, self.standby = self.standby, self.primary


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory postgres may enter (pytest's own tmp dirs are 0700 root)."""
    need(availability())
    root = Path(tempfile.mkdtemp(prefix="esc-ha-"))
    root.chmod(0o711)
    yield root
    for data in root.glob("*/data/pgsql"):
        stop = [str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-s", "-D", str(data)]
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", *stop],
            capture_output=True,
            timeout=60,
        )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(base: Path) -> Pair:
    """Node a the primary, node b its synchronous standby. Tests that change roles leave
    a working pair behind, its roles recorded here."""
    a, b = _make_node(base, "a", A), _make_node(base, "b", B)
    started = time.perf_counter()
    a.cluster.initialise_primary()
    a.cluster.start(as_standby=False)
    initialised = time.perf_counter() - started
    # Synchronous before the standby exists, as on a primary that lost its standby:
    # the clone then inherits the setting, the trap promote() must defuse.
    a.cluster.set_synchronous(True)
    b.cluster.install_replication_secret(a.cluster.replication_secret())
    clone_seconds = b.cluster.clone_from(a.endpoint)
    b.cluster.start(as_standby=True)
    wait_uptodate(a.cluster, timeout=15)
    print(f"\ninitialise+start primary {initialised:.2f} s, clone {clone_seconds:.2f} s")
    return Pair(a, b)


def test_a_home_postgres_cannot_reach_is_refused_naming_the_fix(base: Path) -> None:
    closed = base / "closed"
    closed.mkdir(mode=0o700)
    home = NodeHome(closed / "home")
    cluster = Cluster(home, _settings(A, 5432).ha)
    with pytest.raises(PgsqlError) as error:
        cluster.prepare()
    assert f"user postgres cannot enter {closed} (drwx------)" in str(error.value)
    assert f"chmod o+x {closed}" in str(error.value)
    assert not home.root.exists()


def test_the_primary_owns_its_files_and_admits_only_the_pair(pair: Pair) -> None:
    primary = pair.primary
    cluster = primary.cluster
    for directory in (cluster.data_dir, cluster.socket_dir):
        info = directory.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (_pg_uid(), 0o700)
    for directory in (cluster.home.root, cluster.home.data, cluster.home.run):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o710  # enter, not list
    hba = (cluster.data_dir / "pg_hba.conf").read_text()
    assert "host replication replicator 127.0.0.1/32 scram-sha-256" in hba
    assert "host replication replicator 127.0.0.2/32 scram-sha-256" in hba
    assert "trust" not in hba
    settings = dict(
        _query(
            primary,
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'wal_log_hints',"
            " 'hot_standby', 'listen_addresses', 'port', 'max_wal_senders')",
        )
    )
    assert settings == {
        "wal_level": "replica",
        "wal_log_hints": "on",
        "hot_standby": "on",
        "listen_addresses": A,
        "port": str(primary.endpoint.port),
        "max_wal_senders": "5",
    }
    # escmanager's URL: database esc over the unix socket, as its owner, no password.
    engine = sqlalchemy.create_engine(cluster.database_url())
    try:
        with engine.connect() as conn:
            assert conn.execute(
                sqlalchemy.text("SELECT current_user, current_database()")
            ).one() == (
                "esc",
                "esc",
            )
    finally:
        engine.dispose()
    # Only on its own address; over TCP only with the replication secret.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host=B, port=primary.endpoint.port, user="replicator", connect_timeout=2)
    tcp = {"host": A, "port": primary.endpoint.port, "dbname": "postgres", "connect_timeout": 2}
    for user, password in (("replicator", "wrong"), ("esc", ""), ("postgres", "")):
        with pytest.raises(
            psycopg.OperationalError, match=r"password authentication failed|no password"
        ):
            psycopg.connect(user=user, password=password, **tcp).close()
    psycopg.connect(user="replicator", password=cluster.replication_secret(), **tcp).close()


def test_pg_clients_are_admitted_by_password_from_the_next_start(base: Path) -> None:
    """A node alone on its own port: the networks of [ha] pg_clients join the pair's
    addresses in pg_hba when the node next starts, for logins and never replication."""
    node = _make_node(base, "clients", A)
    cluster = node.cluster
    cluster.initialise_primary()
    cluster.start(as_standby=False)
    try:

        def rules() -> list[tuple]:
            return _query(
                node,
                "SELECT database, user_name, address, netmask, auth_method, error"
                " FROM pg_hba_file_rules WHERE type = 'host'",
            )

        assert not any(rule[2] == "198.18.61.0" for rule in rules())
        cluster.stop()
        settings = cluster.home.load()
        settings.ha.pg_clients = ["198.18.61.0/24", "10.9.9.9/32"]
        settings = Settings.model_validate(settings.model_dump())
        cluster = Cluster(cluster.home, settings.ha, durable=False)
        cluster.start(as_standby=False)
        node = Node(cluster, node.endpoint)
        found = rules()
        for address, netmask in (("198.18.61.0", "255.255.255.0"), ("10.9.9.9", "255.255.255.255")):
            assert (["all"], ["all"], address, netmask, "scram-sha-256", None) in found, found
        assert not any(
            rule[0] == ["replication"] and rule[2] != A and rule[2] != B for rule in found
        )
        # The pair's own lines are unchanged.
        assert (
            ["replication"],
            ["replicator"],
            A,
            "255.255.255.255",
            "scram-sha-256",
            None,
        ) in found
    finally:
        cluster.stop()


def _pg_uid() -> int:
    import pwd

    return pwd.getpwnam(PG_USER).pw_uid


def test_the_standby_is_synchronous_and_sees_the_primarys_writes(pair: Pair) -> None:
    rows = _query(
        pair.primary,
        "SELECT application_name, state, sync_state FROM pg_stat_replication",
    )
    assert rows == [(pair.standby.endpoint.host, "streaming", "sync")]
    assert pair.standby.cluster.in_recovery()
    _write(pair.primary, "first")
    _wait_for(lambda: "first" in _values(pair.standby), what="the write reaching the standby")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        _write(pair.standby, "on the standby")


def _status_text(home: Path, *args: str, command: str = "escadm") -> Result:
    """`escadm replication status ARGS` or `drbdadm ARGS`, in this process (each
    escadm process spends seconds importing; one test runs the installed script)."""
    if command == "drbdadm":
        return CliRunner().invoke(drbdadm_command, [*args, "--home", str(home)])
    return CliRunner().invoke(cli, ["replication", "status", *args, "--home", str(home)])


def test_status_in_drbdadm_words_on_both_sides(pair: Pair) -> None:
    primary, standby = pair.primary, pair.standby
    wait_uptodate(standby.cluster, timeout=15)
    assert read_status(primary.cluster).drbd_text() == (
        "esc role:Primary\n"
        "  disk:UpToDate\n"
        f"  {standby.endpoint.host} role:Secondary\n"
        "    peer-disk:UpToDate\n"
    )
    shown = _status_text(standby.home)
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout == (
        "esc role:Secondary\n"
        "  disk:UpToDate\n"
        f"  {primary.endpoint.host} role:Primary\n"
        "    peer-disk:UpToDate\n"
    )
    drbd = subprocess.run(
        [DRBDADM, "status", "--home", str(primary.home)], capture_output=True, text=True, timeout=60
    )
    assert drbd.returncode == 0, drbd.stderr
    assert drbd.stdout == read_status(primary.cluster).drbd_text()
    as_json = json.loads(_status_text(standby.home, "--json").stdout)
    assert as_json["role"] == "Secondary" and as_json["uptodate"] is True
    assert as_json["peer"]["sync_state"] == "sync"
    assert as_json["peer"]["lag_bytes"] == 0
    statistics = read_status(primary.cluster).drbd_text(statistics=True).splitlines()[-1]
    assert statistics.startswith("    peer-disk:UpToDate sync-state:sync lag-bytes:0 lag-seconds:")


def test_wait_uptodate_succeeds_and_times_out(pair: Pair) -> None:
    done = _status_text(pair.primary.home, "--wait-uptodate", "--timeout", "10")
    assert done.exit_code == 0, done.stderr
    assert "peer-disk:UpToDate" in done.stdout
    pair.primary.cluster.set_synchronous(False)
    try:
        started = time.monotonic()
        late = _status_text(pair.primary.home, "--wait-uptodate", "--timeout", "1")
        assert late.exit_code == 4, late.stderr
        assert time.monotonic() - started < 10
        assert "not UpToDate and synchronous after 1 s" in late.stderr
        assert "sync_state is async" in late.stderr
        assert "peer-disk:UpToDate" in late.stdout  # the last status, for the operator
    finally:
        pair.primary.cluster.set_synchronous(True)
    usage = _status_text(pair.primary.home, "--timeout", "1")
    assert usage.exit_code == 2 and "--wait-uptodate only" in usage.stderr


def test_a_lost_stream_is_connecting_and_outdated(pair: Pair) -> None:
    primary, standby = pair.primary, pair.standby
    standby.cluster.stop()
    _wait_for(lambda: not read_status(primary.cluster).connected, what="the primary noticing")
    # Synchronous with no standby: a commit would wait (the role manager decides when
    # the active may commit alone); the status says so.
    assert "commits wait" in read_status(primary.cluster).notes[0]
    primary.cluster.set_synchronous(False)
    _write(primary, "while alone")
    assert read_status(primary.cluster).drbd_text() == (
        f"esc role:Primary\n  disk:UpToDate\n  {standby.endpoint.host} connection:Connecting\n"
    )
    primary.cluster.stop()
    standby.cluster.start(as_standby=True)
    assert read_status(standby.cluster).drbd_text() == (
        f"esc role:Secondary\n  disk:Outdated\n  {primary.endpoint.host} connection:Connecting\n"
    )
    primary.cluster.start(as_standby=False)
    _wait_for(
        lambda: read_status(primary.cluster).peer.state == "streaming", what="the standby back"
    )
    primary.cluster.set_synchronous(True)
    wait_uptodate(standby.cluster, timeout=15)
    assert "while alone" in _values(standby)


def test_the_supervisors_command_runs_the_postmaster_itself(pair: Pair) -> None:
    standby = pair.standby.cluster
    standby.stop()
    standby.configure_role(as_standby=True)
    server = subprocess.Popen(
        standby.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: standby.server_pid() == server.pid, what="postmaster.pid")
        wait_uptodate(pair.primary.cluster, timeout=15)
        assert standby.in_recovery()
        server.send_signal(STOP_SIGNAL)
        assert server.wait(timeout=30) == 0
        assert not standby.is_running()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    standby.start(as_standby=True)
    wait_uptodate(pair.primary.cluster, timeout=15)


def test_a_killed_servers_pid_file_does_not_keep_the_server_down(pair: Pair) -> None:
    standby = pair.standby.cluster
    standby.stop()
    pidfile = standby.data_dir / "postmaster.pid"
    socket_lock = standby.socket_dir / f".s.PGSQL.{standby.port}.lock"
    # A killed server's pid is a zombie until reaped, or another program's after a
    # reboot: PostgreSQL would take either for a running server and refuse to start.
    zombie = subprocess.Popen(["true"])
    _wait_for(
        lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
        what="a zombie",
    )
    try:
        for stale in (zombie.pid, os.getpid()):
            pidfile.write_text(f"{stale}\n{standby.data_dir}\n")
            socket_lock.write_text(f"{stale}\n{standby.data_dir}\n")
            assert not standby.is_running()
            standby.start(as_standby=True)
            assert standby.server_pid() not in (None, stale)
            wait_uptodate(pair.primary.cluster, timeout=15)
            standby.stop()
    finally:
        zombie.wait()
    standby.start(as_standby=True)
    # A live server's pid file is its own: kept.
    assert standby.clear_stale_lock_files() == []
    assert pidfile.exists() and socket_lock.exists()
    wait_uptodate(pair.primary.cluster, timeout=15)


def test_failover_promotes_without_hanging_and_the_old_primary_is_rewound(pair: Pair) -> None:
    old, new = pair.primary, pair.standby
    # The standby inherited "wait for me" from its primary: promoted as is, its first
    # write would wait for a standby that does not exist.
    assert _query(new, "SHOW synchronous_standby_names") == [(f'"{new.endpoint.host}"',)]
    seconds = new.cluster.promote(synchronous=False)
    print(f"\npromote {seconds:.3f} s")
    assert seconds < 5
    assert not new.cluster.in_recovery()
    assert _query(new, "SHOW synchronous_standby_names") == [("",)]
    _write(new, "after failover")  # within statement_timeout: it did not wait
    assert new.cluster.promote(synchronous=False) == 0.0  # already primary: a no-op
    # The old primary goes on alone for a while (a split brain): what it writes there
    # is on no timeline of the new primary, and the rewind drops it.
    old.cluster.set_synchronous(False)
    _write(old, "diverged")
    result = old.cluster.follow(new.endpoint)
    print(f"follow by {result.method} {result.seconds:.2f} s")
    assert result.method == "rewind", result.rewind_error
    old.cluster.start(as_standby=True)
    new.cluster.set_synchronous(True)
    pair.swap()
    wait_uptodate(new.cluster, timeout=20)
    assert old.cluster.in_recovery()
    _write(new, "after rewind")
    _wait_for(lambda: "after rewind" in _values(old), what="the rewound standby streaming")
    assert "diverged" not in _values(old)
    assert "after failover" in _values(old)
    assert read_status(old.cluster).drbd_text().startswith("esc role:Secondary\n  disk:UpToDate")


def test_an_old_primary_whose_wal_is_gone_is_cloned_afresh(pair: Pair) -> None:
    old, new = pair.primary, pair.standby
    new.cluster.promote(synchronous=False)
    _write(new, "before re-clone")
    old.cluster.stop()
    # Its WAL gone (a disk cleaned by hand, a failed earlier rewind): no rewind possible.
    wal = old.cluster.data_dir / "pg_wal"
    for segment in wal.iterdir():
        if segment.is_file():
            segment.unlink()
    # While it is cloned, the new primary sees the clone, never an UpToDate standby.
    seen: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        following = pool.submit(old.cluster.follow, new.endpoint)
        while not following.done():
            peer = read_status(new.cluster).peer
            seen.append(peer.disk or peer.connection)
            time.sleep(0.01)
        result = following.result()
    print(f"\nfollow by {result.method} {result.seconds:.2f} s")
    assert "Inconsistent" in seen
    assert set(seen) <= {"Connecting", "Inconsistent"}
    assert result.method == "clone"
    assert "pg_rewind" in result.rewind_error
    assert not old.cluster.data_dir.with_name("pgsql.clone").exists()
    assert not old.cluster.data_dir.with_name("pgsql.old").exists()
    old.cluster.start(as_standby=True)
    new.cluster.set_synchronous(True)
    pair.swap()
    wait_uptodate(new.cluster, timeout=20)
    assert "before re-clone" in _values(old)
    # Re-cloned from the new primary, it keeps its own address and port.
    assert _query(old, "SHOW listen_addresses") == [(old.endpoint.host,)]


def test_drbdadm_refuses_other_verbs_and_non_ha_nodes_are_told(base: Path) -> None:
    refused = _status_text(base, "primary", "esc", command="drbdadm")
    assert refused.exit_code == 2
    assert "drbdadm primary is not available on an ESC node" in refused.stderr
    assert "escadm replication status" in refused.stderr
    plain = NodeHome(base / "standalone")
    plain.root.mkdir()
    plain.save(_settings(A, 5432, enabled=False))
    not_ha = _status_text(plain.root)
    assert not_ha.exit_code == 1
    assert "this node is not an HA node" in not_ha.stderr
    stopped = NodeHome(base / "stopped")
    stopped.root.mkdir()
    stopped.save(_settings(A, _free_port(A)))
    down = _status_text(stopped.root, "status", "esc", command="drbdadm")
    assert down.exit_code == 3, down.stderr
    assert "has no data yet" in down.stderr
    other = _status_text(stopped.root, "status", "r0", command="drbdadm")
    assert other.exit_code == 2 and "no resource 'r0'" in other.stderr
