"""A backup as of an older schema revision: only what that revision has, as its own
migrations make it, loaded by code that knows no later revision (this release's load
into a database migrated only that far, and the kept release 1.2.0.1's own restore);
a database behind this release's head backed up as of its own revision, on a
PostgreSQL hot standby too; refused when a migration that is not an expand lies in
the way (a scratch migration history adds one), or when there is no room."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from backup_helpers import (  # noqa: F401 - make_node_fixture: the make_node fixture
    backend_of,
    carry_key,
    make_node_fixture,
    url_of,
)
from conftest import Node, Rows, all_rows, without_local_account
from pg_server import PostgresServer
from sqlalchemy import MetaData, create_engine

from esc.backup import dump
from esc.backup.archive import ArchiveReader
from esc.backup.compress import open_decompressed
from esc.backup.dump import (
    BackupRefused,
    BackupRequestError,
    NoRoom,
    archive_revision,
    snapshot,
    write_backup,
)
from esc.backup.load import load_all
from esc.backup.restore import restore
from esc.backup.signing import ensure_key
from esc.backup.spool import Spool
from esc.backup.tables import BOOKKEEPING, backed_up_tables, column_kinds, migrated_tables
from esc.db.migrate import MIGRATIONS_DIR, alembic_config, head_revision, upgrade
from esc.db.models import Deployment, DeploymentStatus, Tenant
from esc.db.schema_compat import not_expand_after
from esc.db.session import Database

RELEASES = Path(__file__).parents[2] / "releases"
ODD_NAME = "ops.2"  # tenants are named as the API accepts; the odd text goes in JSON
OLDER = "1.2.0.1"  # a kept release whose schema ends at 0008
OLDER_HEAD = "0008"


def migrate(url: str, target: str, config: Config | None = None) -> None:
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        with db.engine.begin() as connection:
            upgrade(connection, target, config)
    finally:
        db.dispose()


def downgrade(url: str, target: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, target)
    finally:
        engine.dispose()


def add_content(url: str) -> None:
    """Rows in tables every revision since 0001 has, one of them in a column of 0009."""
    engine = create_engine(url)
    moment = datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)
    try:
        with engine.begin() as connection:
            connection.execute(
                Tenant.__table__.insert(),
                [
                    {"id": "t-1", "name": "ops", "created_at": moment},
                    {"id": "t-2", "name": ODD_NAME, "created_at": moment},
                ],
            )
            connection.execute(
                Deployment.__table__.insert().values(
                    id="d-1",
                    tenant_id="t-1",
                    name="web",
                    data_model_version=1,
                    status=DeploymentStatus.ACTIVE,
                    descriptor={"name": "web", "day0": "caf\u00e9\t\\"},
                    vim="vim-a",
                    created_at=moment,
                    updated_at=moment,
                )
            )
    finally:
        engine.dispose()


def backup(node: Node, path: Path, **kwargs: object) -> dump.BackupResult:
    db = Database(url_of(node), pool_size=1, max_overflow=0)
    try:
        return write_backup(db, path, node.settings.node.name, ensure_key(node.home), **kwargs)
    finally:
        db.dispose()


def columns_at(url: str) -> dict[str, list[str]]:
    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        return {
            t.name: sorted(c.name for c in t.columns)
            for t in metadata.sorted_tables
            if t.name not in BOOKKEEPING
        }
    finally:
        engine.dispose()


def projected(rows: Rows, columns: dict[str, list[str]]) -> Rows:
    """The rows of `rows` as a schema of these tables and columns holds them."""
    return {
        table: [{c: row[c] for c in names} for row in rows[table]]
        for table, names in columns.items()
    }


def manifest_of(path: Path) -> dict:
    stream = open_decompressed(str(path))
    with contextlib.closing(stream):
        reader = ArchiveReader(stream)
        try:
            return reader.manifest.model_dump()
        finally:
            reader.close()


# what a revision has --------------------------------------------------------------


def test_the_tables_of_the_head_are_the_models_own() -> None:
    """The projection at the head, made by the migrations, is what the models write, so
    a projection elsewhere is made by the same means."""
    migrated = {t.name: t for t in migrated_tables(head_revision())}
    models = {t.name: t for t in backed_up_tables()}
    assert set(migrated) == set(models)
    for name, table in models.items():
        other = migrated[name]
        assert {c.name for c in other.columns} == {c.name for c in table.columns}, name
        assert column_kinds(other) == column_kinds(table), name
        assert [c.name for c in other.primary_key] == [c.name for c in table.primary_key]
    assert "vim_connections" not in {t.name for t in migrated_tables("0008")}


def test_a_backup_as_of_an_older_revision_is_what_code_of_that_revision_loads(
    node: Node, tmp_path: Path, make_node
) -> None:
    """Written as of 0009 from a database at the head: the tables and columns of 0009
    only; a database migrated to 0009 and no further takes it through the load, row
    for row; and this release restores it (migrated on to its head)."""
    url = url_of(node)
    add_content(url)
    before = all_rows(url)
    archive = tmp_path / "as-of-0009.tar.gz"
    result = backup(node, archive, schema="0009")
    manifest = result.manifest
    assert (manifest.schema_revision, result.database_revision) == ("0009", head_revision())
    assert manifest.product_version == dump.__version__
    assert "as of schema revision 0009" in manifest.notes

    older_url = f"sqlite:///{tmp_path / 'older.db'}"  # a database of 0009's code
    migrate(older_url, "0009")
    at_0009 = columns_at(older_url)
    assert "idempotency_keys" not in at_0009 and "vim" in at_0009["deployments"]
    assert {t: sorted(e.columns) for t, e in manifest.tables.items()} == at_0009

    engine = create_engine(older_url)
    stream = open_decompressed(str(archive))
    try:
        with contextlib.closing(stream), engine.begin() as connection:
            reader = ArchiveReader(stream)
            rows = load_all(connection, reader, Spool(tmp_path, 2**30))
    finally:
        engine.dispose()
    assert rows["tenants"] == 2 and rows["deployments"] == 1
    loaded = all_rows(older_url)
    expected = projected(before, at_0009)
    expected["users"] = [u for u in expected["users"] if u["name"] != "escadm"]
    assert {t: r for t, r in loaded.items() if t in at_0009} == expected

    fresh = make_node(backend_of(node), "fresh")
    carry_key(node, fresh)
    restore(fresh.home, fresh.settings, archive)
    restored = without_local_account(all_rows(url_of(fresh)))
    assert projected(restored, at_0009) == projected(without_local_account(before), at_0009)


def test_an_older_release_restores_the_backup_written_for_it(tmp_path: Path, make_node) -> None:
    """The kept release 1.2.0.1, run from its own wheel, restores an archive this release
    wrote as of its schema (0008) for it; one that names this release it refuses."""
    wheel = RELEASES / f"esc-{OLDER}-py3-none-any.whl"
    if not wheel.is_file():
        pytest.skip(f"the kept release {wheel.name} is not in {RELEASES}")
    code = tmp_path / OLDER
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(code)
    source = make_node("sqlite", "source")
    add_content(url_of(source))
    written = backup(source, tmp_path / "for-older.tar.gz", schema=OLDER_HEAD, for_release=OLDER)
    assert written.manifest.product_version == OLDER
    assert f"Written by ESC {dump.__version__}" in written.manifest.notes
    refused = backup(source, tmp_path / "not-for-older.tar.gz", schema=OLDER_HEAD)

    older_home = tmp_path / "older-home"
    env = {**os.environ, "PYTHONPATH": str(code)}

    def older(program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", program, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=code,  # python -c looks here first: the older release's esc, not this one's
        )

    def older_escadm(*args: str) -> subprocess.CompletedProcess:
        main = "from esc.cli.main import main; main()"
        return older(main, *args, "--home", str(older_home))

    which = older("import esc; print(esc.__version__, esc.__file__)").stdout.split()
    assert which == [OLDER, str(code / "esc" / "__init__.py")], which
    assert older_escadm("init", "--api-port", "18999").returncode == 0
    shutil.copy(source.home.backup_key_file, older_home / "data" / "backup.key")

    newer = older_escadm("restore", "--file", str(tmp_path / "not-for-older.tar.gz"))
    assert newer.returncode == 1 and f"newer than this ESC {OLDER}" in newer.stderr
    assert refused.manifest.product_version == dump.__version__

    restored = older_escadm("restore", "--file", str(tmp_path / "for-older.tar.gz"), "--json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    answer = json.loads(restored.stdout)
    assert answer["signature"]["verified"] and answer["rows"]["tenants"] == 2
    rows = all_rows(f"sqlite:///{older_home / 'data' / 'esc.db'}")
    assert rows["alembic_version"] == [{"version_num": OLDER_HEAD}]
    assert {t["name"] for t in rows["tenants"]} == {"ops", ODD_NAME}
    assert [d["name"] for d in rows["deployments"]] == ["web"]


# behind the head --------------------------------------------------------------------


def test_a_database_behind_the_head_is_backed_up_as_of_its_own_revision(
    node: Node, tmp_path: Path, make_node
) -> None:
    url = url_of(node)
    add_content(url)
    downgrade(url, "0009")
    before = all_rows(url)
    result = backup(node, tmp_path / "behind.tar.gz")
    assert (result.manifest.schema_revision, result.database_revision) == ("0009", "0009")
    assert "idempotency_keys" not in result.manifest.tables
    assert result.manifest.tables["tenants"].rows == 2

    fresh = make_node("sqlite", "fresh")
    carry_key(node, fresh)
    restore(fresh.home, fresh.settings, tmp_path / "behind.tar.gz")
    restored = all_rows(url_of(fresh))
    assert restored["alembic_version"] == [{"version_num": head_revision()}]
    at_0009 = {t: sorted(e.columns) for t, e in result.manifest.tables.items()}
    assert projected(without_local_account(restored), at_0009) == projected(
        without_local_account(before), at_0009
    )


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_backup_reads_in_one_read_only_repeatable_read_transaction(db_url: str) -> None:
    """What a hot standby answers (it refuses SERIALIZABLE and every write)."""
    migrate(db_url, "head")
    db = Database(db_url, pool_size=1, max_overflow=0)
    try:
        with snapshot(db) as connection:
            assert connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
            isolation = connection.exec_driver_sql("SHOW transaction_isolation").scalar()
            assert isolation == "repeatable read"
            with pytest.raises(Exception, match="read-only transaction"):
                connection.exec_driver_sql("DELETE FROM tenants")
    finally:
        db.dispose()


def test_a_postgresql_hot_standby_is_backed_up_as_of_its_revision(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A new release's standby replicating an older primary: its schema is the
    primary's (0009); it answers the backup's read-only snapshot, and once the primary
    is migrated, as of the new head or, asked, of 0009 again."""
    name = f"esc_{os.urandom(6).hex()}"
    primary_url = postgres.create_database(name)
    standby = None
    try:
        migrate(primary_url, "0009")
        add_content(primary_url)
        standby = postgres.start_standby()
        standby_url = standby.url(name)
        db = Database(standby_url, pool_size=1, max_overflow=0)
        try:
            with db.engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT pg_is_in_recovery()").scalar()
            behind = write_backup(db, tmp_path / "standby-0009.tar.gz", "n2")
            assert behind.manifest.schema_revision == "0009"
            assert behind.manifest.tables["tenants"].rows == 2

            migrate(primary_url, "head")
            deadline = time.monotonic() + 30
            while manifest_revision(db) != head_revision():
                assert time.monotonic() < deadline, "the standby did not replay the migration"
                time.sleep(0.1)
            # (manifest_revision reads on a connection of the pool the backup used: a
            # backup leaves it as it found it, not asking for READ WRITE.)
            current = write_backup(db, tmp_path / "standby-head.tar.gz", "n2")
            assert current.manifest.schema_revision == head_revision()
            again = write_backup(db, tmp_path / "standby-as-0009.tar.gz", "n2", schema="0009")
            assert again.manifest.schema_revision == "0009"
            assert {t: e.sha256 for t, e in again.manifest.tables.items()} == {
                t: e.sha256 for t, e in behind.manifest.tables.items()
            }
        finally:
            db.dispose()
    finally:
        if standby is not None:
            standby.stop()
        postgres.drop_database(name)


def manifest_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


# refused ------------------------------------------------------------------------------


def scratch_history(tmp_path: Path, *extra: tuple[str, str | None, str]) -> Config:
    """This release's migrations and `extra` ones after them: (revision, esc_kind, body)."""
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, location, ignore=shutil.ignore_patterns("__pycache__"))
    down = head_revision()
    for revision, kind, body in extra:
        declared = "" if kind is None else f"esc_kind = {kind!r}\n"
        (location / "versions" / f"{revision}_scratch.py").write_text(
            "import sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = {revision!r}\ndown_revision = {down!r}\n{declared}\n\n"
            f"def upgrade() -> None:\n{body}\n\n\ndef downgrade() -> None:\n    pass\n"
        )
        down = revision
    config = Config()
    config.set_main_option("script_location", str(location))
    return config


ADD_TABLE = '    op.create_table("later_things", sa.Column("id", sa.Integer, primary_key=True))'
DROP_COLUMN = (
    '    with op.batch_alter_table("vm_groups") as batch:\n        batch.drop_column("placement")'
)


def test_a_migration_that_is_not_an_expand_in_the_way_is_refused_naming_it(
    db_url: str, tmp_path: Path
) -> None:
    """A history whose code knows a contract (0012) between the revision asked for and
    the database's: refused naming it; at or after it, taken."""
    config = scratch_history(
        tmp_path, ("0012", "contract", DROP_COLUMN), ("0013", "expand", ADD_TABLE)
    )
    scripts = ScriptDirectory.from_config(config)
    migrate(db_url, "head", config)
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            with pytest.raises(BackupRefused) as refused:
                archive_revision(connection, "0011", scripts)
            message = str(refused.value)
            assert "cannot be written as of revision 0011" in message
            assert "migration 0012 (0012_scratch.py) is a contract migration" in message
            assert "back up as of 0012 or later" in message
            assert archive_revision(connection, "0012", scripts) == ("0013", "0012")
            assert archive_revision(connection, None, scripts) == ("0013", "0013")
            with pytest.raises(BackupRequestError, match="'0042' is not one of"):
                archive_revision(connection, "0042", scripts)
    finally:
        engine.dispose()

    # One that declares no kind cannot even be migrated past (the record needs its kind),
    # and counts as not an expand all the same.
    undeclared = scratch_history(tmp_path / "undeclared", ("0012", None, ADD_TABLE))
    blocking = not_expand_after(ScriptDirectory.from_config(undeclared), "0009", "0012")
    assert [s.revision for s in blocking] == ["0012"]


def test_a_revision_newer_than_the_database_or_unknown_is_refused(
    node: Node, tmp_path: Path
) -> None:
    downgrade(url_of(node), "0009")
    with pytest.raises(BackupRefused, match="0011 is newer than the database's 0009"):
        backup(node, tmp_path / "newer.tar.gz", schema="0011")
    with pytest.raises(BackupRequestError, match="'0042' is not one of this release's"):
        backup(node, tmp_path / "unknown.tar.gz", schema="0042")
    with pytest.raises(BackupRequestError, match="newer than this ESC"):
        backup(node, tmp_path / "later.tar.gz", for_release="9.0.0.1")
    assert sorted(p.name for p in tmp_path.iterdir() if "tar" in p.name) == []


def test_a_newer_release_schema_is_written_as_of_this_head_when_it_is_compatible(
    node: Node, tmp_path: Path, make_node
) -> None:
    """After a quick rollback this release runs on a newer expand-only schema: its
    backup is as of this release's head; past a newer contract it is refused."""
    url = url_of(node)
    add_content(url)
    migrate(url, "head", scratch_history(tmp_path / "expand", ("0099", "expand", ADD_TABLE)))
    result = backup(node, tmp_path / "ahead.tar.gz")
    assert (result.manifest.schema_revision, result.database_revision) == (
        head_revision(),
        "0099",
    )
    assert "later_things" not in result.manifest.tables
    assert backup(node, tmp_path / "ahead-0009.tar.gz", schema="0009").manifest.tables
    fresh = make_node("sqlite", "fresh")
    carry_key(node, fresh)
    restore(fresh.home, fresh.settings, tmp_path / "ahead.tar.gz")
    assert {t["name"] for t in all_rows(url_of(fresh))["tenants"]} == {"ops", ODD_NAME}

    other = make_node("sqlite", "contracted")
    contract = scratch_history(tmp_path / "contract", ("0099", "contract", DROP_COLUMN))
    migrate(url_of(other), "head", contract)
    with pytest.raises(BackupRefused) as refused:
        backup(other, tmp_path / "contracted.tar.gz")
    assert "compatible only from revision 0099" in str(refused.value)
    assert "back up with that release" in str(refused.value)


def test_a_backup_without_room_is_refused_before_anything_is_written(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    free = shutil.disk_usage(directory).free
    monkeypatch.setattr(dump, "ROOM_RESERVE_BYTES", free + 1)  # more than the disk has
    with pytest.raises(NoRoom) as refused:
        backup(node, directory / "full.tar.gz")
    assert f"{directory} has" in str(refused.value) and "nothing was written" in str(refused.value)
    assert list(directory.iterdir()) == []
