"""dynamic mappings

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 05:18:23.441009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a new table.
esc_kind = "expand"


def upgrade() -> None:
    op.create_table(
        "dynamic_mappings",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("meta_type", sa.String(length=64), nullable=False),
        sa.Column("user_label", sa.String(length=256), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_dynamic_mappings")),
    )


def downgrade() -> None:
    op.drop_table("dynamic_mappings")
