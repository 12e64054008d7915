"""An index for a rig's latest batches (the dashboard's rig panel, ``GET /rigs/{rig}``).

Without it that read scanned and sorted every batch of every session the server has run, several
times a second per open dashboard.

Revision ID: 0007_batch_rig_index
Revises: 0006_write_indexes
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_batch_rig_index"
down_revision: str | None = "0006_write_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_batches_rig_sent_at", "batches", ["rig", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_rig_sent_at", table_name="batches")
