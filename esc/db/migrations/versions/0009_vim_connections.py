"""VIM connections as rows, the connection each deployment uses, what a VM is on a
real VIM (interfaces, volumes, placement), and the controller's id that tags its
instances on every VIM

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 19:00:00.000000
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a new table, nullable columns, and a controller_settings row of its own
# (older code reads that table by name).
esc_kind = "expand"


def upgrade() -> None:
    op.create_table(
        "vim_connections",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("driver", sa.String(length=32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_vim_connections")),
    )
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("vim", sa.String(length=64), nullable=True))
    with op.batch_alter_table("vm_groups") as batch:
        for column in ("interfaces", "volumes", "placement"):
            batch.add_column(sa.Column(column, sa.JSON(), nullable=True))
    # Made once, here, for a new database and an upgraded one alike: it is replicated to
    # the standby and kept by backup and restore, so the controller stays the same one
    # for its instances wherever it runs next.
    settings = sa.table(
        "controller_settings",
        sa.column("name", sa.String),
        sa.column("value", sa.String),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        settings,
        [{"name": "controller_id", "value": uuid.uuid4().hex, "updated_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.execute("DELETE FROM controller_settings WHERE name = 'controller_id'")
    with op.batch_alter_table("vm_groups") as batch:
        for column in ("interfaces", "volumes", "placement"):
            batch.drop_column(column)
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("vim")
    op.drop_table("vim_connections")
