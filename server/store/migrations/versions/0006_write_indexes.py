"""Drop three indexes that every step wrote and no query needs.

``stimuli.content_hash`` was never searched: the archive finds a file by the hash it reads from the
stimulus row. Its keys are random, so each of a generation's stimuli dirtied a page of its own, all
written to the WAL and fsynced at the step's commit. ``stimuli.session_id`` and ``events.thread_id``
are each the first column of an index that 0005 added, which serves the same lookups.

Revision ID: 0006_write_indexes
Revises: 0005_read_indexes
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_write_indexes"
down_revision: str | None = "0005_read_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_stimuli_content_hash", table_name="stimuli")
    op.drop_index("ix_stimuli_session_id", table_name="stimuli")
    op.drop_index("ix_events_thread_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_thread_id", "events", ["thread_id"])
    op.create_index("ix_stimuli_session_id", "stimuli", ["session_id"])
    op.create_index("ix_stimuli_content_hash", "stimuli", ["content_hash"])
