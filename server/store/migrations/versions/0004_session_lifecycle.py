"""Session lifecycle: thread states waiting_for_rig/blocked/failed and last_error, finished sessions,
and the objective each generation is scored with.

Revision ID: 0004_session_lifecycle
Revises: 0003_state_snapshots
Create Date: 2026-11-28 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_session_lifecycle"
down_revision: str | None = "0003_state_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_THREAD = ("running", "paused", "stopped", "finished")
NEW_THREAD = ("running", "waiting_for_rig", "blocked", "paused", "stopped", "finished", "failed")
OLD_SESSION = ("active", "stopped")
NEW_SESSION = ("active", "stopped", "finished")


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _set_statuses(table: str, name: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.alter_column("status", existing_type=_enum(old, name), type_=_enum(new, name),
                              existing_nullable=False)


def upgrade() -> None:
    _set_statuses("threads", "threadstatus", OLD_THREAD, NEW_THREAD)
    _set_statuses("sessions", "sessionstatus", OLD_SESSION, NEW_SESSION)
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("objective_json", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("objective_json")
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_column("last_error")
    op.execute("UPDATE threads SET status = 'running' WHERE status IN ('waiting_for_rig', 'blocked')")
    op.execute("UPDATE threads SET status = 'stopped' WHERE status = 'failed'")
    op.execute("UPDATE sessions SET status = 'stopped' WHERE status = 'finished'")
    _set_statuses("sessions", "sessionstatus", NEW_SESSION, OLD_SESSION)
    _set_statuses("threads", "threadstatus", NEW_THREAD, OLD_THREAD)
