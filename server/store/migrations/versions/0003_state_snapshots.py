"""Optimizer state snapshots: a per-generation summary of the state after tell.

Full states are kept only at generations 0, 1, 2, 4, 8, ... from now on (the engine replays the
others); the summary keeps sigma, the norm of the mean and the best score for every generation.

Revision ID: 0003_state_snapshots
Revises: 0002_trial_facts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_state_snapshots"
down_revision: str | None = "0002_trial_facts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("optimizer_summary_json", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("optimizer_summary_json")
