"""The node's own PostgreSQL 15, one of a streaming-replicated active/standby pair.

A `Cluster` is the PostgreSQL of one HA node: its data under the node home
(`data/pgsql`, owned by `postgres`, 0700), its private unix socket
(`run/pgsql`), its log (`log/pgsql.log`). The node's supervisor, role change
and CLI call it; it decides nothing about roles by itself.

    cluster = Cluster(home, settings.ha)
    cluster.initialise_primary()          # first node: initdb, roles, database esc
    cluster.clone_from()                  # second node: pg_basebackup from the peer
    cluster.configure_role(as_standby=True)
    argv = cluster.command()              # the supervisor runs this in the foreground
    cluster.promote(synchronous=False)    # on MASTER: the promoter decides sync
    cluster.follow()                      # an old primary: pg_rewind, else a re-clone

Every PostgreSQL program runs as OS user `postgres` (PostgreSQL refuses root).
The node's files stay root's: the home, `data/`, `log/` and `run/` are given
group `postgres` and mode 0710, so that postgres may enter them (not list
them) on its way to its own directories.

Authentication, and why:
- Local socket: `peer` with an ident map. The kernel proves the OS user, so no
  password is stored for the node's own processes: `postgres` and `root` (the
  node runs as root) connect as the superuser `postgres`, root also as `esc`,
  the owner of database `esc` that escmanager uses. The socket directory is
  postgres's own, mode 0700, so no other OS user reaches it.
- TCP, only from the pair's two addresses (/32 each) and the networks of
  `[ha] pg_clients` (never for replication), `scram-sha-256`: the
  role `replicator` (REPLICATION, the functions pg_rewind reads files with,
  pg_monitor and pg_checkpoint) is the only one with a password, so it is the only
  role a remote peer can log in as. A source address alone is not a proof of
  identity on a LAN, hence a password rather than `trust`; SCRAM never sends it
  in clear and stores only a verifier. The secret is in a libpq passfile,
  `data/pgsql.passfile` (owner postgres, 0600), on both nodes: the first node
  creates it, the second needs a copy (see `install_replication_secret`)
  before it can clone. It never appears in a configuration file that a base
  backup or a rewind copies, nor on a command line.

Standby and primary share one postgresql.conf shape; the node's own address,
port and socket are written by this node after every clone or rewind, since
both copy the peer's configuration files, and at every start, so that a changed
setting takes effect then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from esc.config import HaSettings, NodeHome

log = logging.getLogger(__name__)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
DATABASE = "esc"  # the database escmanager uses
DATABASE_ROLE = "esc"  # its owner, reached over the local socket only
REPLICATION_ROLE = "replicator"
CLUSTER_NAME = "esc"
# The supervisor stops the server with this signal: "fast" shutdown (clients
# are disconnected) rather than SIGTERM's "smart" one, which waits for them.
STOP_SIGNAL = signal.SIGINT
# WAL kept for a standby that fell behind or a rewound old primary that must
# catch up from the point the pair diverged; bounded so a dead peer cannot fill
# the disk (past it, follow() re-clones).
WAL_KEEP_SIZE = "256MB"
# How long a broken replication connection takes to be noticed on either side (the
# status then says Connecting / Outdated). While the active waits for a standby that
# is gone, its commits wait too: short, so they wait about this long before the
# active marks the standby outdated and commits alone. The standby reports every
# second (wal_receiver_status_interval), so a live one is never taken for gone.
REPLICATION_TIMEOUT = "3s"
CONNECT_TIMEOUT_S = 5
UNIX_SOCKET_PATH_MAX = 107  # sun_path, less its terminating NUL


def _lock_file_pid(path: Path) -> int | None:
    """The pid on the first line of a PostgreSQL lock file, None without one."""
    try:
        return int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class PgsqlError(Exception):
    """The node's PostgreSQL could not do what was asked; the message names the fix."""


class PgsqlUnavailable(PgsqlError):
    """The node's PostgreSQL does not answer on its socket (stopped, or not initialised)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a node's PostgreSQL listens on the pair's network."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FollowResult:
    """How `follow()` made this node a standby: `rewind` or `clone`, and how long it took."""

    method: str
    seconds: float
    rewind_error: str = ""  # why pg_rewind could not be used, when method is clone


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


def _conninfo(**params: object) -> str:
    """A libpq connection string; every value quoted (a path may hold blanks)."""
    return " ".join(
        f"{key}='{str(value).replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
        for key, value in params.items()
    )


def _guc_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def clone_application_name(application_name: str) -> str:
    """The application_name of a node's clone in progress (its pg_basebackup's)."""
    return f"{application_name}-clone"


def _postgres_ids() -> tuple[int, int, set[int]]:
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        raise PgsqlError(
            f"there is no OS user '{PG_USER}' to run PostgreSQL as: install Debian's "
            "postgresql-15 package"
        ) from None
    groups = set(os.getgrouplist(PG_USER, entry.pw_gid))
    return entry.pw_uid, entry.pw_gid, groups


def _postgres_may_enter(path: Path) -> bool:
    uid, _gid, groups = _postgres_ids()
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


class Cluster:
    """The PostgreSQL of one HA node. `durable=False` turns fsync off, in the server and
    in the tools that write its data (tests only).

    `initialise_primary`, `clone_from` and `follow` leave the server stopped: the
    caller starts it with `start()` or, under a supervisor, `configure_role()` and
    `command()`.
    """

    def __init__(
        self, home: NodeHome, ha: HaSettings, *, durable: bool = True, bin_dir: Path = PG_BIN
    ) -> None:
        if ha.address is None or len(ha.node_list) != 2:
            raise PgsqlError(
                "this node is not configured as one of an HA pair: esc.toml's [ha] needs "
                "node_list (the two nodes' addresses) and address (this node's)"
            )
        self.home = home
        self.ha = ha
        self.durable = durable
        self.bin_dir = bin_dir

    # -- where things are -------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.home.data / "pgsql"

    @property
    def socket_dir(self) -> Path:
        return self.home.run / "pgsql"

    @property
    def log_file(self) -> Path:
        """Where `start()` sends the server's log (a supervisor keeps its own)."""
        return self.home.log / "pgsql.log"

    @property
    def secret_file(self) -> Path:
        """The libpq passfile holding the pair's replication secret."""
        return self.home.data / "pgsql.passfile"

    @property
    def address(self) -> str:
        return str(self.ha.address)

    @property
    def port(self) -> int:
        return self.ha.pg_port

    @property
    def application_name(self) -> str:
        """The name this node streams under. Its address, not its host name: the primary
        names the standby it waits for in synchronous_standby_names, and ha.node_list
        is all it knows of its peer."""
        return self.address

    @property
    def peer(self) -> Endpoint:
        """The peer's PostgreSQL: the pair's other address, on the same pg_port."""
        return Endpoint(str(self.ha.peer), self.ha.pg_port)

    def _no_sync(self) -> list[str]:
        """initdb, pg_basebackup and pg_rewind fsync every file they wrote, which is
        seconds of a test's time and no use without durability."""
        return [] if self.durable else ["--no-sync"]

    def _program(self, name: str) -> str:
        return str(self.bin_dir / name)

    # -- files and permissions --------------------------------------------------------

    def check_access(self) -> None:
        """Raise PgsqlError unless user postgres can reach the home (each directory
        above it must let postgres enter) and the socket path fits a unix socket."""
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > UNIX_SOCKET_PATH_MAX:
            raise PgsqlError(
                f"the node's PostgreSQL socket {socket_path} is longer than the "
                f"{UNIX_SOCKET_PATH_MAX} bytes a unix socket path may have: put the node "
                "home in a shorter path"
            )
        for directory in reversed(self.home.root.parents):
            if directory.exists() and not _postgres_may_enter(directory):
                mode = stat.filemode(directory.stat().st_mode)
                raise PgsqlError(
                    f"user {PG_USER} cannot enter {directory} ({mode}), on the way to the "
                    f"node's PostgreSQL data in {self.data_dir}: let it pass "
                    f"(chmod o+x {directory}, which lets others enter but not list it) "
                    "or put the node home in a directory postgres can reach"
                )

    def prepare(self) -> None:
        """Create the directories postgres needs and let it reach them (idempotent)."""
        self.check_access()
        self.home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.check_access()  # again: mkdir made the missing ancestors under the umask
        uid, gid, _groups = _postgres_ids()
        as_root = os.geteuid() == 0
        for directory in (self.home.root, self.home.data, self.home.log, self.home.run):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if as_root:
                os.chown(directory, -1, gid)
                directory.chmod(0o710)  # root's; postgres's group may enter, not list
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(mode=0o600, exist_ok=True)
        self.clear_stale_lock_files()
        if as_root:
            for path in (self.socket_dir, self.log_file):
                os.chown(path, uid, gid)

    def _make_postgres_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        if os.geteuid() == 0:
            uid, gid, _groups = _postgres_ids()
            os.chown(path, uid, gid)

    def _write_postgres_file(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        if os.geteuid() == 0:
            uid, gid, _groups = _postgres_ids()
            os.chown(tmp, uid, gid)
        tmp.replace(path)

    def _run(self, argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(
                _as_postgres(argv), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise PgsqlError(f"{what} did not finish within {timeout:.0f} s") from None
        if result.returncode != 0:
            raise PgsqlError(f"{what} failed: {(result.stderr or result.stdout).strip()}")
        return result

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _require_initialised(self) -> None:
        if not self.is_initialised():
            raise PgsqlUnavailable(
                f"this node's PostgreSQL has no data yet ({self.data_dir}): initialise it "
                "on the first node of the pair, or clone it from the primary on the second"
            )

    # -- the secret -------------------------------------------------------------------

    def install_replication_secret(self, secret: str) -> None:
        """Store the pair's replication secret (the same on both nodes). The second node
        needs the first node's (copy its data/pgsql.passfile) before clone_from()."""
        if not secret or any(c in secret for c in ":\\\n"):
            raise PgsqlError("a replication secret is a non-empty line without ':' or '\\'")
        self.prepare()
        self._write_postgres_file(self.secret_file, f"*:*:*:{REPLICATION_ROLE}:{secret}\n")

    def replication_secret(self) -> str:
        try:
            line = self.secret_file.read_text().strip()
        except FileNotFoundError:
            raise PgsqlError(
                f"this node has no replication secret ({self.secret_file}): copy that file "
                "from the pair's primary node (same path, owner postgres, mode 0600)"
            ) from None
        return line.split(":", 4)[4]

    # -- configuration ----------------------------------------------------------------

    def _write_node_config(self) -> None:
        """postgresql.conf, pg_hba.conf and pg_ident.conf of this node."""
        settings = {
            "cluster_name": _guc_string(CLUSTER_NAME),
            "listen_addresses": _guc_string(self.address),
            "port": str(self.port),
            "unix_socket_directories": _guc_string(str(self.socket_dir)),
            "unix_socket_permissions": "0700",
            "max_connections": "100",
            "password_encryption": "scram-sha-256",
            "wal_level": "replica",
            "max_wal_senders": "5",  # the standby, a clone in progress, spares
            "wal_keep_size": _guc_string(WAL_KEEP_SIZE),
            "wal_log_hints": "on",  # what pg_rewind needs to see every changed page
            "hot_standby": "on",
            # A backup on the standby reads one snapshot for as long as it takes: without
            # the feedback, the primary's vacuum removes rows that snapshot still sees and
            # the standby cancels the backup (after max_standby_streaming_delay).
            "hot_standby_feedback": "on",
            "wal_sender_timeout": _guc_string(REPLICATION_TIMEOUT),
            "wal_receiver_timeout": _guc_string(REPLICATION_TIMEOUT),
            "wal_receiver_status_interval": _guc_string("1s"),
            # A standby whose primary is away retries this often (default 5 s): it is
            # back in sync about as soon as its primary is.
            "wal_retrieve_retry_interval": _guc_string("1s"),
            "lc_messages": _guc_string("C"),
            "log_line_prefix": _guc_string("%m [%p] "),
        }
        if not self.durable:
            settings["fsync"] = "off"
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write_postgres_file(
            self.data_dir / "postgresql.conf",
            "# Written by ESC for this node and rewritten after every clone or rewind.\n" + conf,
        )
        pair = [f"{address}/32" for address in self.ha.node_list]
        hba = ["# TYPE  DATABASE     USER        ADDRESS  METHOD", "local all all peer map=esc"]
        hba += [f"host replication {REPLICATION_ROLE} {net} scram-sha-256" for net in pair]
        hba += [f"host all all {net} scram-sha-256" for net in pair]
        # Clients the operator names (monitoring, a database-level check): the same
        # password login as the peer's, never replication, which only the peer needs.
        hba += [f"host all all {net} scram-sha-256" for net in self.ha.pg_clients]
        self._write_postgres_file(self.data_dir / "pg_hba.conf", "\n".join(hba) + "\n")
        me = pwd.getpwuid(os.geteuid()).pw_name
        ident = [f"esc {PG_USER} {PG_USER}", f"esc {me} {PG_USER}", f"esc {me} {DATABASE_ROLE}"]
        self._write_postgres_file(self.data_dir / "pg_ident.conf", "\n".join(ident) + "\n")

    def _source_conninfo(
        self, peer: Endpoint, dbname: str | None = None, application_name: str | None = None
    ) -> str:
        params: dict[str, object] = {
            "host": peer.host,
            "port": peer.port,
            "user": REPLICATION_ROLE,
            "passfile": self.secret_file,
            "application_name": application_name or self.application_name,
            "connect_timeout": CONNECT_TIMEOUT_S,
        }
        if dbname:
            params["dbname"] = dbname
        return _conninfo(**params)

    def _write_standby_config(self, peer: Endpoint) -> None:
        """primary_conninfo in postgresql.auto.conf (a clone or rewind leaves the peer's
        there, or none) and standby.signal."""
        auto = self.data_dir / "postgresql.auto.conf"
        kept = [
            line
            for line in (auto.read_text().splitlines() if auto.exists() else [])
            if line.split("=", 1)[0].strip() not in ("primary_conninfo", "primary_slot_name")
        ]
        kept.append(f"primary_conninfo = {_guc_string(self._source_conninfo(peer))}")
        self._write_postgres_file(auto, "\n".join(kept) + "\n")
        self._write_postgres_file(self.data_dir / "standby.signal", "")

    def _has_primary_conninfo(self) -> bool:
        auto = self.data_dir / "postgresql.auto.conf"
        return auto.exists() and any(
            line.split("=", 1)[0].strip() == "primary_conninfo"
            for line in auto.read_text().splitlines()
        )

    def was_primary(self) -> bool:
        """The data last ran as a primary (initialised, or promoted, or started without
        standby.signal): following a peer that has been promoted since needs a rewind."""
        return self.is_initialised() and not (self.data_dir / "standby.signal").exists()

    def stand_by_for(self, peer: Endpoint | None = None) -> None:
        """Set the data up as a standby of `peer` as it is, without rewinding: for a
        former primary whose peer is not (yet) known to be the new primary. Its data
        stays as it was, so promoting it later loses nothing; if the peer has been
        promoted meanwhile, follow() rewinds it."""
        self._require_initialised()
        self._write_standby_config(peer or self.peer)

    def configure_role(self, *, as_standby: bool) -> None:
        """Set the data directory up to start as a standby (standby.signal) or a primary.
        A standby's data started as a primary ends its recovery at once: a promotion,
        after which the caller decides synchronous replication (set_synchronous)."""
        self._require_initialised()
        # Written at every start too, not only after a clone or rewind: a changed [ha]
        # setting (pg_clients, pg_port) takes effect when the node next starts.
        self._write_node_config()
        signal_file = self.data_dir / "standby.signal"
        if as_standby:
            if not self._has_primary_conninfo():
                raise PgsqlError(
                    f"{self.data_dir} has never followed a primary (no primary_conninfo): "
                    "clone it from the primary (clone_from) or follow one (follow) first"
                )
            self._write_postgres_file(signal_file, "")
        else:
            signal_file.unlink(missing_ok=True)

    # -- creating the data ------------------------------------------------------------

    def initialise_primary(self, timeout: float = 120) -> None:
        """initdb, this node's configuration, the replication role, database `esc` owned
        by role `esc`; creates the replication secret if the node has none. Refuses a
        node that already has data. Leaves the server stopped."""
        if self.is_initialised():
            raise PgsqlError(
                f"this node's PostgreSQL already has data ({self.data_dir}); it is kept. "
                "Remove that directory first to start afresh"
            )
        self.prepare()
        if not self.secret_file.exists():
            self.install_replication_secret(secrets.token_urlsafe(32))
        secret = self.replication_secret()
        shutil.rmtree(self.data_dir, ignore_errors=True)  # an initdb that died half-way
        self._make_postgres_dir(self.data_dir)
        self._run(
            [
                self._program("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_USER,
                "-E",
                "UTF8",
                # C collation: the same sort order on both nodes whatever their libc
                # version, so an index built on one is valid on the other.
                "--locale=C",
                "--data-checksums",
                *self._no_sync(),
            ],
            "initdb",
            timeout,
        )
        self._write_node_config()
        # Socket only while the roles are made: nothing reaches it over the network yet.
        self._pg_ctl_start(timeout, extra_options="-c listen_addresses=''")
        try:
            with self.connect() as conn:
                conn.execute(
                    sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                        sql.Identifier(REPLICATION_ROLE), sql.Literal(secret)
                    )
                )
                role = sql.Identifier(REPLICATION_ROLE)
                # pg_monitor: a standby reads how its primary sees it; pg_checkpoint:
                # a follower checkpoints a just-promoted primary before pg_rewind.
                conn.execute(sql.SQL("GRANT pg_monitor, pg_checkpoint TO {}").format(role))
                # What pg_rewind reads the source's files with (its documented minimum).
                for function in (
                    "pg_ls_dir(text, boolean, boolean)",
                    "pg_stat_file(text, boolean)",
                    "pg_read_binary_file(text)",
                    "pg_read_binary_file(text, bigint, bigint, boolean)",
                ):
                    conn.execute(
                        sql.SQL(f"GRANT EXECUTE ON FUNCTION pg_catalog.{function} TO {{}}").format(
                            role
                        )
                    )
                conn.execute(
                    sql.SQL("CREATE ROLE {} WITH LOGIN").format(sql.Identifier(DATABASE_ROLE))
                )
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(DATABASE), sql.Identifier(DATABASE_ROLE)
                    )
                )
        finally:
            self.stop(timeout)

    def clone_from(
        self, peer: Endpoint | None = None, *, replace: bool = False, timeout: float = 600
    ) -> float:
        """Make this node a standby of `peer` (default: the pair's other node) with a base
        backup streamed from it; returns the seconds it took. The copy is made beside the
        data directory and swapped in only when complete. Existing data is replaced only
        with `replace=True`. Leaves the server stopped, set up as a standby."""
        peer = peer or self.peer
        if self.is_running():
            raise PgsqlError("this node's PostgreSQL is running: stop it before cloning over it")
        if self.is_initialised() and not replace:
            raise PgsqlError(
                f"this node's PostgreSQL already has data ({self.data_dir}); cloning would "
                "replace it: use follow() for an old primary, or replace=True"
            )
        self.prepare()
        self.replication_secret()  # fails early, naming the file to copy
        started = time.perf_counter()
        clone = self.data_dir.with_name("pgsql.clone")
        shutil.rmtree(clone, ignore_errors=True)  # a clone that died half-way
        self._make_postgres_dir(clone)
        try:
            self._run(
                [
                    self._program("pg_basebackup"),
                    "-D",
                    str(clone),
                    "-d",
                    # Not the standby's own name: the clone's WAL stream must not count
                    # as the standby (in synchronous_standby_names or in the status).
                    self._source_conninfo(
                        peer, application_name=clone_application_name(self.application_name)
                    ),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",  # an immediate checkpoint on the source, not a spread one
                    "-w",
                    *self._no_sync(),
                ],
                f"pg_basebackup from {peer}",
                timeout,
            )
        except PgsqlError:
            shutil.rmtree(clone, ignore_errors=True)
            raise
        old = self.data_dir.with_name("pgsql.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.data_dir.exists():
            self.data_dir.rename(old)
        clone.rename(self.data_dir)
        shutil.rmtree(old, ignore_errors=True)
        self._write_node_config()
        self._write_standby_config(peer)
        return time.perf_counter() - started

    def follow(self, peer: Endpoint | None = None, *, timeout: float = 600) -> FollowResult:
        """Make this node (typically an old primary) a standby of `peer`: stop it, then
        pg_rewind it to the peer's timeline; when rewind is impossible (its WAL from
        before the divergence is gone, a failed earlier rewind, no data at all), clone it
        afresh. Leaves the server stopped, set up as a standby. Under a supervisor, hold
        the supervisor's restart of pgsql while this runs."""
        peer = peer or self.peer
        self.prepare()
        self.replication_secret()
        self.stop(timeout)
        if not self.is_initialised():
            seconds = self.clone_from(peer, replace=True, timeout=timeout)
            return FollowResult("clone", seconds, "this node had no data")
        started = time.perf_counter()
        try:
            self._checkpoint(peer)
            self._run(
                [
                    self._program("pg_rewind"),
                    "--target-pgdata",
                    str(self.data_dir),
                    "--source-server",
                    self._source_conninfo(peer, dbname="postgres"),
                    *self._no_sync(),
                ],
                f"pg_rewind from {peer}",
                timeout,
            )
        except PgsqlError as rewind_error:
            try:
                seconds = self.clone_from(peer, replace=True, timeout=timeout)
            except PgsqlError as clone_error:
                raise PgsqlError(f"{clone_error} (after {rewind_error})") from None
            return FollowResult("clone", seconds, str(rewind_error))
        self._write_node_config()
        self._write_standby_config(peer)
        return FollowResult("rewind", time.perf_counter() - started)

    def peer_is_primary(self, peer: Endpoint | None = None) -> bool:
        """Does `peer` (default: the pair's other node) answer as a primary? PgsqlError
        when it does not answer (down, or still starting)."""
        peer = peer or self.peer
        try:
            with psycopg.connect(
                self._source_conninfo(peer, dbname="postgres"), autocommit=True
            ) as conn:
                return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except psycopg.Error as exc:
            raise PgsqlError(f"{peer} does not answer: {str(exc).strip()}") from None

    def _checkpoint(self, peer: Endpoint) -> None:
        """A checkpoint on a just-promoted peer. Until its first checkpoint after the
        promotion, its control file still names the old timeline, and pg_rewind, which
        reads it, would find "no rewind required" and leave this node diverged."""
        try:
            with psycopg.connect(
                self._source_conninfo(peer, dbname="postgres"), autocommit=True
            ) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:
            raise PgsqlError(f"a checkpoint on {peer} failed: {exc}") from None

    # -- running ----------------------------------------------------------------------

    def command(self) -> list[str]:
        """argv running the server in the foreground as user postgres, for a supervisor:
        setpriv execs postgres in place (no intermediate process, unlike runuser), so
        the supervisor's child is the postmaster itself and its signals reach it. Call
        configure_role() first; stop it with STOP_SIGNAL."""
        server = [self._program("postgres"), "-D", str(self.data_dir)]
        if os.geteuid() != 0:
            return server
        return [
            "setpriv",
            f"--reuid={PG_USER}",
            f"--regid={PG_USER}",
            "--init-groups",
            "--",
            *server,
        ]

    def _pg_ctl_start(self, timeout: float, extra_options: str = "") -> None:
        argv = [
            self._program("pg_ctl"),
            "start",
            "-w",
            "-t",
            str(int(timeout)),
            "-s",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
        ]
        if extra_options:
            argv += ["-o", extra_options]
        try:
            self._run(argv, "starting PostgreSQL", timeout + 10)
        except PgsqlError as exc:
            raise PgsqlError(f"{exc}\n{self._log_tail()}") from None

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return f"last lines of {self.log_file}:\n" + self.log_file.read_text()[-size:]
        except OSError:
            return ""

    def start(self, *, as_standby: bool, timeout: float = 60) -> None:
        """Start the server in the background (pg_ctl) and wait until it answers."""
        self.prepare()
        if self.is_running():
            if self.in_recovery() != as_standby:
                raise PgsqlError(
                    f"this node's PostgreSQL already runs as a "
                    f"{'primary' if as_standby else 'standby'}: use "
                    f"{'follow() to make it a standby' if as_standby else 'promote()'}"
                )
            return
        self.configure_role(as_standby=as_standby)
        self._pg_ctl_start(timeout)

    def stop(self, timeout: float = 60) -> None:
        """Stop the server, however it was started ("fast": clients are disconnected)."""
        if not self.is_running():
            return
        self._run(
            [
                self._program("pg_ctl"),
                "stop",
                "-w",
                "-t",
                str(int(timeout)),
                "-s",
                "-m",
                "fast",
                "-D",
                str(self.data_dir),
            ],
            "stopping PostgreSQL",
            timeout + 10,
        )

    def server_pid(self) -> int | None:
        """The postmaster's pid while it runs (from postmaster.pid), else None."""
        pid = _lock_file_pid(self.data_dir / "postmaster.pid")
        return pid if pid is not None and self._is_our_postmaster(pid) else None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether pid is a live server of this data directory: a postmaster works in
        its data directory. A killed server's pid may be a zombie not yet reaped, or,
        after a reboot, another program's."""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except PermissionError:
            return True  # not ours to look into: as PostgreSQL itself, take it as running
        except (OSError, IndexError):
            return False
        return state != "Z" and cwd == self.data_dir.resolve()

    def clear_stale_lock_files(self) -> list[Path]:
        """Remove the lock files (postmaster.pid, the socket's .lock and its socket) of
        a server that no longer runs; returns what was removed. PostgreSQL takes any
        live pid in them, a zombie's included, for a running server and refuses to
        start; pg_ctl stop would signal that pid."""
        socket_lock = self.socket_dir / f".s.PGSQL.{self.port}.lock"
        removed = []
        for lock in (self.data_dir / "postmaster.pid", socket_lock):
            pid = _lock_file_pid(lock)
            if pid is None or self._is_our_postmaster(pid):
                continue
            stale = [lock] if lock != socket_lock else [lock, lock.with_suffix("")]
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
            log.warning("removed %s: pid %d in it is no server of this node", lock, pid)
        return removed

    def is_running(self) -> bool:
        return self.server_pid() is not None

    def connect(self, dbname: str = "postgres", timeout: float = CONNECT_TIMEOUT_S):
        """A superuser connection over the node's unix socket, autocommit."""
        try:
            return psycopg.connect(
                host=str(self.socket_dir),
                port=self.port,
                user=PG_USER,
                dbname=dbname,
                autocommit=True,
                connect_timeout=max(1, int(timeout)),
            )
        except psycopg.OperationalError as exc:
            self._require_initialised()
            raise PgsqlUnavailable(
                f"this node's PostgreSQL does not answer on {self.socket_dir} "
                f"({str(exc).strip().splitlines()[-1]}): start the node (escadm start)"
            ) from None

    def in_recovery(self) -> bool:
        """True on a standby."""
        with self.connect() as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    # -- role changes -----------------------------------------------------------------

    def promote(self, *, synchronous: bool, timeout: float = 60) -> float:
        """Make this standby the primary; returns the seconds the promotion took (0.0 when
        it already was the primary). `synchronous` has no default: a standby inherits the
        old primary's synchronous_standby_names, and with no standby left its first write
        would wait for ever, so whoever promotes decides. It is set before promoting, so
        no write on the new primary ever sees the old value."""
        with self.connect() as conn:
            self._set_synchronous(conn, synchronous)
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                return 0.0
            started = time.perf_counter()
            # A function call on this connection: no pg_ctl to fork. Not wait => true:
            # that checks for the end of recovery every 100 ms; polling here every 5 ms
            # takes the role up to 95 ms sooner.
            if not conn.execute("SELECT pg_promote(false)").fetchone()[0]:
                raise PgsqlError(f"PostgreSQL refused to promote: see {self.log_file}")
            deadline = time.monotonic() + timeout
            while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                if time.monotonic() > deadline:
                    raise PgsqlError(
                        f"PostgreSQL did not finish its promotion within {timeout:.0f} s: "
                        f"see {self.log_file} or the supervisor's log/pgsql.out"
                    )
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
        return elapsed

    def synchronous_standby_names(self, on: bool) -> str:
        """The setting meaning "wait for the peer": its application name, quoted."""
        return f'"{self.peer.host}"' if on else ""

    def set_synchronous(self, on: bool) -> None:
        """On: each commit waits until the peer has flushed it; off: it does not wait.
        Effective when this returns."""
        with self.connect() as conn:
            self._set_synchronous(conn, on)

    def _set_synchronous(self, conn: psycopg.Connection, on: bool) -> None:
        wanted = self.synchronous_standby_names(on)
        conn.execute(
            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(wanted))
        )
        conn.execute("SELECT pg_reload_conf()")
        # The reload is a signal; this session rereads the file before a later query,
        # so seeing the new value here means the server has it.
        deadline = time.monotonic() + 5
        while conn.execute("SHOW synchronous_standby_names").fetchone()[0] != wanted:
            if time.monotonic() > deadline:
                raise PgsqlError(
                    "PostgreSQL did not take the new synchronous_standby_names within 5 s"
                )
            time.sleep(0.01)

    def is_synchronous(self) -> bool:
        with self.connect() as conn:
            return bool(conn.execute("SHOW synchronous_standby_names").fetchone()[0])

    # -- clients ----------------------------------------------------------------------

    def database_url(self) -> str:
        """The SQLAlchemy URL of database `esc` over the node's unix socket (peer auth)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql+psycopg://{DATABASE_ROLE}@/{DATABASE}?host={host}&port={self.port}"
