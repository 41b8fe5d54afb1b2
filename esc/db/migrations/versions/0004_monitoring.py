"""monitoring: recovery attempts per VM, custom scripts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 07:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a column older code leaves to its server default, and a new table.
esc_kind = "expand"


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(
            sa.Column("recovery_attempts", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "custom_scripts",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_custom_scripts")),
    )


def downgrade() -> None:
    op.drop_table("custom_scripts")
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("recovery_attempts")
