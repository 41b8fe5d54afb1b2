"""Expand and contract: every migration says which it is, the schema records the oldest
revision whose code may run on it, and code meets a schema behind or ahead of its head
as a rolling upgrade and a quick rollback need (a newer release's schema is made here
by a copy of this release's migrations with one more of its own)."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import to_tuple
from conftest import Node
from pg_server import PostgresServer
from sqlalchemy import text

from esc.config import Settings
from esc.db import schema_compat
from esc.db.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    schema_fit,
    script_directory,
    upgrade_to_head,
)
from esc.db.schema_compat import (
    KIND_HELP,
    KINDS,
    Fit,
    MigrationKindError,
    SchemaTooNew,
    compatible_from,
    kind_of,
    recorded,
)
from esc.db.session import Database
from esc.engine.controller import Controller
from esc.engine.idempotency import KeyedRequest
from esc.engine.lease import DatabaseLease, NotActive
from esc.engine.northbound import Northbound
from esc.health import check_database
from esc.upgrade.schema_path import parse_script

NEWER = "0099"


def upgrade(db: Database, target: str, config: Config | None = None) -> None:
    config = config or alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, target)


def downgrade(db: Database, target: str) -> None:
    config = alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, target)


def write_script(versions: Path, revision: str, down: str | None, kind: str | None, body: str):
    declared = "" if kind is None else f"esc_kind = {kind!r}\n"
    (versions / f"{revision}_test.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\n{declared}\n\n"
        f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
    )


# The newer release's one migration: an expand adds a table, a contract drops a column
# this release's models use.
NEWER_BODIES = {
    "expand": '    op.create_table("newer_things", sa.Column("id", sa.Integer, primary_key=True))',
    "contract": (
        '    with op.batch_alter_table("vm_groups") as batch:\n'
        '        batch.drop_column("placement")'
    ),
}


def newer_release(tmp_path: Path, kind: str) -> Config:
    """The migrations of a newer release: this release's, and one more of `kind`."""
    location = tmp_path / f"newer-{kind}"
    shutil.copytree(MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    write_script(location / "versions", NEWER, head_revision(), kind, NEWER_BODIES[kind])
    config = Config()
    config.set_main_option("script_location", str(location))
    return config


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


# the rule ---------------------------------------------------------------------------


def test_every_migration_declares_expand_or_contract() -> None:
    """Read both ways the code reads it: by alembic's loaded modules (the record) and as
    text (the online-upgrade pre-check reads a target's wheel without running it)."""
    scripts = list(script_directory().walk_revisions())
    assert len(scripts) >= 10
    for script in scripts:
        kind = kind_of(script)  # raises, naming the migration, without a valid kind
        assert kind in KINDS
        parsed = parse_script(Path(script.path).name, Path(script.path).read_text())
        assert (parsed.revision, parsed.kind) == (script.revision, kind)
        assert parsed.down_revisions == to_tuple(script.down_revision, default=())


@pytest.mark.parametrize("module", [SimpleNamespace(), SimpleNamespace(esc_kind="additive")])
def test_a_migration_without_a_valid_kind_is_named_with_the_fix(module: SimpleNamespace) -> None:
    script = SimpleNamespace(revision="0042", path="/x/versions/0042_thing.py", module=module)
    with pytest.raises(MigrationKindError) as raised:
        kind_of(script)  # type: ignore[arg-type]
    message = str(raised.value)
    declared = getattr(module, "esc_kind", None)
    assert f"migration 0042 (0042_thing.py) has esc_kind = {declared!r}" in message
    assert KIND_HELP in message


def test_compatible_from_is_the_newest_contract_at_or_below(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    chain = [("a1", None, "expand"), ("b2", "a1", "contract"), ("c3", "b2", "expand")]
    chain += [("d4", "c3", "expand"), ("e5", "d4", None)]
    for revision, down, kind in chain:
        write_script(versions, revision, down, kind, "    pass")
    scripts = ScriptDirectory(str(tmp_path))
    assert compatible_from(scripts, "a1") == "a1"  # no contract: the base
    assert [compatible_from(scripts, r) for r in ("b2", "c3", "d4")] == ["b2"] * 3
    with pytest.raises(MigrationKindError, match="migration e5"):
        compatible_from(scripts, "e5")


# the record -------------------------------------------------------------------------


def test_every_migration_run_records_the_floor_of_where_it_ended(db: Database) -> None:
    head = head_revision()
    upgrade_to_head(db.engine)
    with db.engine.connect() as connection:
        assert recorded(connection) == (head, compatible_from(script_directory(), head))
    downgrade(db, "0009")  # below the record's own migration: the table goes with it
    with db.engine.connect() as connection:
        assert recorded(connection) is None
    upgrade_to_head(db.engine)
    with db.engine.begin() as connection:
        assert recorded(connection) == (head, "0001")  # 0001..head are all expand here
        connection.execute(text("UPDATE schema_compat SET compatible_from = 'wrong'"))
    upgrade_to_head(db.engine)  # at head: nothing to migrate, the record is made right
    with db.engine.connect() as connection:
        assert recorded(connection) == (head, "0001")
        assert connection.execute(text("SELECT count(*) FROM schema_compat")).scalar() == 1


# behind head ------------------------------------------------------------------------


def test_behind_head_is_healthy_only_where_the_role_is_not_held(db: Database) -> None:
    upgrade(db, "0009")
    waiting = check_database(db, standby=True)
    assert waiting.ok, waiting.detail
    assert waiting.detail.endswith(
        f"schema at 0009, this release's is {head_revision()}: migrated when this node takes "
        "the active role"
    )
    holding = check_database(db, standby=False)  # standalone, or the active: it migrates
    assert not holding.ok
    assert (
        holding.detail
        == f"schema at 0009, expected {head_revision()}: restart escmanager to migrate"
    )


def test_a_keyed_write_to_a_node_behind_head_without_the_role_is_refused_not_failed(
    db: Database,
) -> None:
    # A new release's standby of an older primary, or a node still migrating as it
    # takes the role: its schema lacks the idempotency keys (0010). A retry sent there
    # is told to go to the active (503), not failed on the missing table (500).
    upgrade(db, "0009")
    northbound = Northbound(db, None, Settings(), lambda _tx: None, DatabaseLease(db, "n2", ""))
    request = KeyedRequest.of("admin", "k-1", "POST", "/v0/tenants", "", b'{"name": "t"}')
    keyed = northbound.keyed(request, lambda tenant: (201, {"name": tenant.name}))
    with pytest.raises(NotActive, match="n2"):
        keyed.create_tenant("t")


def test_a_postgresql_standby_behind_head_is_healthy(postgres: PostgresServer) -> None:
    """A standby in recovery replays the old primary's schema: it cannot migrate, and it
    migrates when promoted and given the role."""
    name = f"esc_{uuid.uuid4().hex[:12]}"
    primary = Database(postgres.create_database(name))
    standby_server = None
    try:
        upgrade(primary, "0009")
        standby_server = postgres.start_standby()
        standby = Database(standby_server.url(name))
        try:
            with standby.engine.connect() as connection:
                assert connection.execute(text("SELECT pg_is_in_recovery()")).scalar()
            result = check_database(standby)  # the database says standby, not the caller
            assert result.ok, result.detail
            assert "schema at 0009" in result.detail and "takes the active role" in result.detail
        finally:
            standby.dispose()
    finally:
        primary.dispose()
        if standby_server is not None:
            standby_server.stop()
        postgres.drop_database(name)


def test_taking_the_active_role_migrates_and_measures_it(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(node.home.database_url(node.settings))
    try:
        downgrade(db, "0009")
    finally:
        db.dispose()
    controller = Controller(node.home, node.settings)
    with caplog.at_level(logging.INFO, logger="esc.db.migrate"):
        controller.start()
    try:
        migration = controller.last_migration
        assert migration is not None and migration is controller.active.migration
        assert (migration.from_revision, migration.to_revision) == ("0009", head_revision())
        assert 0 < migration.seconds < 60
        assert migration.as_dict() == {
            "from": "0009",
            "to": head_revision(),
            "seconds": migration.seconds,
        }
        assert (
            f"database schema migrated from 0009 to {head_revision()} in {migration.seconds:.3f} s"
            in caplog.text
        )
        assert current_revision(controller.db.engine) == head_revision()
    finally:
        controller.stop(timeout=10)
    again = Controller(node.home, node.settings)
    again.start()
    try:
        assert again.last_migration is None  # at head: nothing migrated
    finally:
        again.stop(timeout=10)


# ahead of head ----------------------------------------------------------------------


def test_a_newer_expand_only_schema_runs_without_migrating(node: Node, tmp_path: Path) -> None:
    """A quick rollback: the previous release takes the role on the newer schema."""
    db = Database(node.home.database_url(node.settings))
    try:
        upgrade(db, "head", newer_release(tmp_path, "expand"))
        state = schema_fit(db.engine)
        assert (state.revision, state.fit, state.compatible_from) == (
            NEWER,
            Fit.AHEAD_COMPATIBLE,
            "0001",
        )
        result = check_database(db)
        assert result.ok
        assert result.detail.endswith(
            f"schema {NEWER} from a newer release, compatible with this one (expand-only "
            f"beyond {head_revision()})"
        )
    finally:
        db.dispose()
    controller = Controller(node.home, node.settings)
    controller.start()
    try:
        assert controller.active is not None and controller.last_migration is None
        assert current_revision(controller.db.engine) == NEWER
        assert controller.active.alive()
    finally:
        controller.stop(timeout=10)


def test_a_newer_schema_past_a_contract_is_refused_naming_the_fix(
    node: Node, tmp_path: Path
) -> None:
    db = Database(node.home.database_url(node.settings))
    try:
        upgrade(db, "head", newer_release(tmp_path, "contract"))
        state = schema_fit(db.engine)
        assert (state.fit, state.compatible_from) == (Fit.AHEAD_INCOMPATIBLE, NEWER)
        expected = (
            f"the database schema is at revision {NEWER}, from a newer release, compatible "
            f"only from revision {NEWER}, which this release does not have (a contract "
            "migration removed or changed what it uses); this release's schema is "
            f"{head_revision()}: upgrade this node to the release of schema {NEWER}"
        )
        result = check_database(db, standby=True)  # never healthy, standby or not
        assert (result.ok, result.detail) == (False, expected)
        with pytest.raises(SchemaTooNew) as raised:
            upgrade_to_head(db.engine)
        assert str(raised.value) == expected
    finally:
        db.dispose()
    controller = Controller(node.home, node.settings)
    with pytest.raises(SchemaTooNew):
        controller.start()
    assert controller.active is None  # the role was not taken
    controller.stop(timeout=10)
    db = Database(node.home.database_url(node.settings))
    try:
        assert current_revision(db.engine) == NEWER  # left as the newer release made it
    finally:
        db.dispose()


def test_an_unknown_revision_without_its_own_record_is_refused(
    db: Database, tmp_path: Path
) -> None:
    upgrade(db, "head", newer_release(tmp_path, "expand"))
    with db.engine.begin() as connection:  # a record left from another revision
        connection.execute(text(f"UPDATE schema_compat SET revision = '{head_revision()}'"))
    state = schema_fit(db.engine)
    assert (state.fit, state.compatible_from) == (Fit.AHEAD_INCOMPATIBLE, None)
    assert "records no revision older code may run on it" in state.refusal()
    with db.engine.begin() as connection:  # a schema older than the record itself
        connection.execute(text("DROP TABLE schema_compat"))
    assert schema_fit(db.engine).fit is Fit.AHEAD_INCOMPATIBLE
    with pytest.raises(SchemaTooNew, match=f"revision {NEWER}, from a newer release"):
        upgrade_to_head(db.engine)


def test_the_record_is_no_model_so_backups_leave_it_to_the_restore() -> None:
    from esc.backup.tables import backed_up_tables

    assert schema_compat.TABLE not in {t.name for t in backed_up_tables()}
