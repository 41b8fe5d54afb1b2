"""controller settings (op_mode)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:44:05.737819
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a new table and its row.
esc_kind = "expand"


def upgrade() -> None:
    op.create_table(
        "controller_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_controller_settings")),
    )
    # The row exists from the start, so a write and a mode switch always lock
    # the same row (no race on its creation).
    settings = sa.table(
        "controller_settings",
        sa.column("name", sa.String),
        sa.column("value", sa.String),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        settings, [{"name": "op_mode", "value": "OPERATION", "updated_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("controller_settings")
