"""Indexes for the engine's per-generation reads, so they do not grow with the session.

Every RESULTS checks its stimuli against the batch's generation and the session's references: with
only ``stimuli.session_id`` indexed, that read every stimulus of the session. Every completed
generation reads the thread's earlier ``generation.completed`` events (the drift monitor): with
only ``events.thread_id`` indexed, that read every event of the thread.

Revision ID: 0005_read_indexes
Revises: 0004_session_lifecycle
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_read_indexes"
down_revision: str | None = "0004_session_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_stimuli_session_kind", "stimuli", ["session_id", "kind"])
    op.create_index("ix_events_thread_kind", "events", ["thread_id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_events_thread_kind", table_name="events")
    op.drop_index("ix_stimuli_session_kind", table_name="stimuli")
