"""Protocol 1.1 trial facts: presentations.trial_json.

Revision ID: 0002_trial_facts
Revises: 0001
Create Date: 2026-11-28 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_trial_facts"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trial_json", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.drop_column("trial_json")
