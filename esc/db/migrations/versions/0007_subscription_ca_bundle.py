"""subscription CA bundle (release 1.1.0.2): the PEM certificates a subscription's
HTTPS callback is verified against, for receivers under a private PKI

Create Date: 2026-12-01 09:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: a nullable column.
esc_kind = "expand"


def upgrade() -> None:
    # NULL for the existing subscriptions: verified against the system's CAs, as before.
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("ca_bundle", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("ca_bundle")
