"""A throwaway PostgreSQL 15 server for the tests and benchmarks.

Runs as user `postgres` (PostgreSQL refuses root), listens on 127.0.0.1 on a
free port and on a unix socket in its own directory; everything lives in a
temporary directory removed at stop().
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"


def availability() -> str | None:
    """None when a server can be started here, else why not (and the fix)."""
    if not (PG_BIN / "postgres").exists():
        return (
            f"PostgreSQL 15 binaries not found in {PG_BIN}: install Debian package "
            "postgresql-15 (./scripts/test does)"
        )
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no '{USER}' user: install Debian package postgresql-15"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != USER:
        return "tests must run as root (or as postgres) to start PostgreSQL as user postgres"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    return args if os.geteuid() != 0 else ["runuser", "-u", USER, "--", *args]


class PostgresServer:
    """start() / create_database(name) -> SQLAlchemy URL / drop_database(name) / stop().

    durable=False turns off fsync for test speed; benchmarks keep durability.
    """

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.root: Path | None = None
        self.port = 0

    @property
    def data_dir(self) -> Path:
        assert self.root
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root
        return self.root / "socket"

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(_as_postgres(args), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {result.stderr or result.stdout}\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        return log.read_text()[-2000:] if log and log.exists() else ""

    def _make_root(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.socket_dir.mkdir()
        entry = pwd.getpwnam(USER)
        if os.geteuid() == 0:
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def start(self) -> None:
        self._make_root("esc-pg-")
        self._run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        self._launch()

    def start_standby(self) -> PostgresServer:
        """A streaming standby of this server: in recovery, read-only, replaying its WAL
        (initdb's trust rules admit the replication connection from 127.0.0.1)."""
        standby = PostgresServer(durable=self.durable)
        standby._make_root("esc-pg-standby-")
        source = ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
        # A fast checkpoint: the default spreads it over minutes.
        clone = ["-D", str(standby.data_dir), "-R", "--checkpoint=fast"]
        standby._run([str(PG_BIN / "pg_basebackup"), *source, *clone])
        standby._launch()
        return standby

    def _launch(self) -> None:
        last_error: Exception | None = None
        for _ in range(3):  # another process may take the free port before we bind it
            self.port = _free_port()
            options = [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.socket_dir}",
                "-c max_connections=200",
            ]
            if not self.durable:
                options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            try:
                self._run(
                    [
                        str(PG_BIN / "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        "60",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.root / "server.log"),
                        "-o",
                        " ".join(options),
                    ]
                )
                return
            except RuntimeError as exc:
                last_error = exc
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(
                    [str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data_dir)]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True
        )

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
