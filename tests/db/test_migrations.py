"""Alembic: the migrations build exactly the models' schema, in one linear history."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from esc.db import schema_compat
from esc.db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head
from esc.db.models import Base
from esc.db.session import Database


def test_models_and_migrations_do_not_differ(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade_to_head(db.engine)
        with db.engine.connect() as connection:
            opts = {"compare_type": True, "include_object": schema_compat.include_object}
            context = MigrationContext.configure(connection, opts=opts)
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], f"models and migrations differ; add a migration: {diff}"
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()


def test_upgrade_to_head_twice_is_harmless(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade_to_head(db.engine)
        upgrade_to_head(db.engine)
        assert current_revision(db.engine) == head_revision()
    finally:
        db.dispose()


def test_history_is_linear() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert len(scripts.get_heads()) == 1, "migration history has branched: merge the heads"
    for revision in scripts.walk_revisions():
        assert not revision.is_merge_point, f"{revision.revision} merges branches"
        assert not revision.is_branch_point, f"{revision.revision} starts a branch"


def test_0005_gives_past_events_their_severity(db_url: str) -> None:
    """Release 1.1's migration carries data, not only columns: events written by 1.0
    get the severity 1.1 would have given them."""
    from alembic import command
    from sqlalchemy import text

    db = Database(db_url)
    try:
        config = alembic_config()
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0004")
        with db.engine.begin() as connection:
            for type_, status in (
                ("VM_ALIVE", "SUCCESS"),
                ("VM_RECOVERY_FAILED", "FAILURE"),
                ("VM_MANUAL_RECOVERY_NEEDED", "FAILURE"),
            ):
                connection.execute(
                    text(
                        "INSERT INTO events (type, status, message, tenant, deployment_name, "
                        "created_at) VALUES (:t, :s, 'm', 'ten', 'dep', CURRENT_TIMESTAMP)"
                    ),
                    {"t": type_, "s": status},
                )
        upgrade_to_head(db.engine)
        with db.engine.connect() as connection:
            found = dict(connection.execute(text("SELECT type, severity FROM events")).all())
        assert found == {
            "VM_ALIVE": "INFO",
            "VM_RECOVERY_FAILED": "ERROR",
            "VM_MANUAL_RECOVERY_NEEDED": "CRITICAL",
        }
    finally:
        db.dispose()


def test_0006_leaves_open_transactions_of_older_releases_unowned(db_url: str) -> None:
    """A transaction an older release left in progress has no owner after the upgrade,
    so the first executor that starts resumes it."""
    from alembic import command
    from sqlalchemy import text

    db = Database(db_url)
    try:
        config = alembic_config()
        with db.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO transactions (id, operation, state, tenant, deployment_name, "
                    "request, progress, automatic, resumes, created_at) VALUES ('old', "
                    "'UNDEPLOY', 'IN_PROGRESS', 't', 'd', '{}', '{}', false, 0, "
                    "CURRENT_TIMESTAMP)"
                )
            )
        upgrade_to_head(db.engine)
        with db.engine.connect() as connection:
            row = connection.execute(text("SELECT owner, epoch FROM transactions")).one()
            owners = connection.execute(text("SELECT count(*) FROM owners")).scalar()
        assert tuple(row) == (None, 0) and owners == 0
    finally:
        db.dispose()
