"""Engine and sessions for SQLite and PostgreSQL.

Writers on SQLite take the write lock when they begin (BEGIN IMMEDIATE):
a deferred transaction that upgrades from read to write can fail at once
with "database is locked" instead of waiting, which would turn ordinary
concurrency into errors. Readers stay deferred and, under WAL, never block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_SQLITE_BEGIN = "esc_sqlite_begin"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction acknowledged to a client survives a power cut.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """One node's database: an engine and the two kinds of session it hands out."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()
        # Enough connections for the API's thread pool (40) and the engine's
        # workers, so a request never queues for a connection.
        engine_kwargs.setdefault("pool_size", 20)
        engine_kwargs.setdefault("max_overflow", 30)
        if self.backend == "sqlite":
            engine_kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        self.engine = create_engine(self.url, **engine_kwargs)
        if self.backend == "sqlite":
            _sqlite_setup(self.engine)
        writer = self.engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(writer, expire_on_commit=False)
        self._local = threading.local()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; nothing it changes is committed."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose work commits as one transaction, or rolls back on error."""
        depth = getattr(self._local, "writes", 0)
        self._local.writes = depth + 1
        try:
            with self._writer() as session, session.begin():
                yield session
        finally:
            self._local.writes = depth

    def in_write(self) -> bool:
        """Whether the calling thread has a write open: what must not wait on the
        network (a VIM call) can assert it does not."""
        return getattr(self._local, "writes", 0) > 0

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def display_url(self) -> str:
        """The URL with its password hidden, for logs and status output."""
        return self.url.render_as_string(hide_password=True)
