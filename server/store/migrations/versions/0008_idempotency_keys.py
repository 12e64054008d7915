"""sessions.idempotency_key: the ``Idempotency-Key`` a session was created with, so a ``POST /sessions`` retried
after a client's timeout answers the session it created instead of creating another.

Revision ID: 0008_idempotency_keys
Revises: 0007_batch_rig_index
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_idempotency_keys"
down_revision: str | None = "0007_batch_rig_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.create_index("ix_sessions_idempotency_key", "sessions", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_sessions_idempotency_key", table_name="sessions")
    op.drop_column("sessions", "idempotency_key")
