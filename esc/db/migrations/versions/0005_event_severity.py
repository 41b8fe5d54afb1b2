"""event severity (release 1.1): INFO, ERROR or CRITICAL, derived for past events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 08:25:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a column older code leaves to its server default (INFO) and an index; the
# update of past events only fills that column.
esc_kind = "expand"

events = sa.table(
    "events",
    sa.column("type", sa.String),
    sa.column("status", sa.String),
    sa.column("severity", sa.String),
)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("severity", sa.String(length=32), server_default="INFO", nullable=False)
        )
        batch.create_index(batch.f("ix_events_severity"), ["severity"], unique=False)
    # Past events get the severity the release that adds it gives new ones.
    op.execute(events.update().where(events.c.status == "FAILURE").values(severity="ERROR"))
    op.execute(
        events.update()
        .where(events.c.type == "VM_MANUAL_RECOVERY_NEEDED")
        .values(severity="CRITICAL")
    )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_index(batch.f("ix_events_severity"))
        batch.drop_column("severity")
