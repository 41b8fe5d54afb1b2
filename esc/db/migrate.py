"""Alembic, driven from code: the node's schema is brought to head, unless it is
already ahead of it and this release may run on it (esc.db.schema_compat)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from esc.db.schema_compat import Fit, SchemaFit, SchemaTooNew, assess, is_known

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# alembic's `context` is one per process: two migration runs of one process (the active
# role's, a restore's, a backup's scratch schema) must not interleave.
_RUNNING = threading.Lock()


@dataclass(frozen=True)
class Migration:
    """One run of the migrations that changed the schema, and how long it took."""

    from_revision: str | None  # None: the database was empty
    to_revision: str
    seconds: float

    def as_dict(self) -> dict:
        return {"from": self.from_revision, "to": self.to_revision, "seconds": self.seconds}


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        # '%' would be read as interpolation by ConfigParser.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(connection: Connection, target: str, config: Config | None = None) -> None:
    """Migrate the database of `connection` to `target` in its transaction, with this
    release's migrations or those of `config`."""
    config = config or alembic_config()
    with _RUNNING:
        config.attributes["connection"] = connection
        command.upgrade(config, target)


def upgrade_to_head(engine: Engine) -> Migration | None:
    """Migrate to this release's head; the migration run, None when nothing changed.
    A schema from a newer release is left as it is when this release may run on it,
    else SchemaTooNew says which release can."""
    state = require_runnable(engine)
    if state.fit is Fit.AHEAD_COMPATIBLE:
        log.info(
            "database schema %s is from a newer release, compatible with this one "
            "(expand-only beyond %s): not migrated",
            state.revision,
            state.head,
        )
        return None
    started = time.monotonic()
    with engine.begin() as connection:
        upgrade(connection, "head")
    if state.fit is Fit.CURRENT:
        return None
    migration = Migration(state.revision, state.head, round(time.monotonic() - started, 3))
    log.info(
        "database schema migrated from %s to %s in %.3f s",
        migration.from_revision or "empty",
        migration.to_revision,
        migration.seconds,
    )
    return migration


@functools.cache  # the scripts are files of this installed release: they do not change
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def head_revision() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migration history has {len(heads)} heads, expected one: {heads}")
    return heads[0]


def is_known_revision(revision: str) -> bool:
    """Whether `revision` is one of this release's migrations."""
    return is_known(script_directory(), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_fit(engine: Engine) -> SchemaFit:
    """How the database's schema stands to this release's migrations."""
    with engine.connect() as connection:
        return assess(connection, script_directory(), head_revision())


def require_runnable(engine: Engine) -> SchemaFit:
    """The schema's fit, unless this release cannot run on it (SchemaTooNew, naming
    the revisions and the fix)."""
    state = schema_fit(engine)
    if state.fit is Fit.AHEAD_INCOMPATIBLE:
        raise SchemaTooNew(state.refusal())
    return state
