"""Alembic: the migrations build exactly the models' schema, in one linear history."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from esc.db.migrate import alembic_config, current_revision, head_revision, upgrade_to_head
from esc.db.models import Base
from esc.db.session import Database


def test_models_and_migrations_do_not_differ(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade_to_head(db.engine)
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
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
