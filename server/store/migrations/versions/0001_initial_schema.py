"""Initial schema: sessions, threads, generations, stimuli, batches, presentations, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 20:46:34.120281
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("sessions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("rig", sa.String(length=200), nullable=False),
    sa.Column("animal", sa.String(length=200), nullable=False),
    sa.Column("array", sa.String(length=200), nullable=False),
    sa.Column("notes", sa.Text(), nullable=False),
    sa.Column("config_json", sa.JSON(), nullable=False),
    sa.Column("status", sa.Enum("active", "stopped", name="sessionstatus", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions"))
    )
    op.create_table("threads",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("session_id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column("generator", sa.String(length=100), nullable=False),
    sa.Column("generator_version", sa.String(length=100), nullable=True),
    sa.Column("optimizer", sa.String(length=100), nullable=False),
    sa.Column("optimizer_params_json", sa.JSON(), nullable=False),
    sa.Column("objective_json", sa.JSON(), nullable=False),
    sa.Column("seed", sa.Integer(), nullable=False),
    sa.Column("n_generations", sa.Integer(), nullable=False),
    sa.Column("repeats", sa.Integer(), nullable=False),
    sa.Column("status", sa.Enum("running", "paused", "stopped", "finished", name="threadstatus", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_threads_session_id_sessions")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_threads")),
    sa.UniqueConstraint("session_id", "name", name=op.f("uq_threads_session_id_name"))
    )
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_threads_session_id"), ["session_id"], unique=False)
    op.create_table("events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("session_id", sa.Integer(), nullable=True),
    sa.Column("thread_id", sa.Integer(), nullable=True),
    sa.Column("time", sa.DateTime(), nullable=False),
    sa.Column("level", sa.Enum("debug", "info", "warning", "error", name="eventlevel", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column("kind", sa.String(length=64), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("data_json", sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_events_session_id_sessions")),
    sa.ForeignKeyConstraint(["thread_id"], ["threads.id"], name=op.f("fk_events_thread_id_threads")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_events"))
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_thread_id"), ["thread_id"], unique=False)
    op.create_table("generations",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("thread_id", sa.Integer(), nullable=False),
    sa.Column("number", sa.Integer(), nullable=False),
    sa.Column("status", sa.Enum("pending", "complete", name="generationstatus", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column("codes", sa.LargeBinary(), nullable=False),
    sa.Column("n_stimuli", sa.Integer(), nullable=False),
    sa.Column("optimizer_state", sa.LargeBinary(), nullable=True),
    sa.Column("scores_json", sa.JSON(), nullable=True),
    sa.Column("mean_score", sa.Float(), nullable=True),
    sa.Column("max_score", sa.Float(), nullable=True),
    sa.Column("reference_mean", sa.Float(), nullable=True),
    sa.Column("n_scored", sa.Integer(), nullable=False),
    sa.Column("asked_at", sa.DateTime(), nullable=False),
    sa.Column("completed_at", sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(["thread_id"], ["threads.id"], name=op.f("fk_generations_thread_id_threads")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    sa.UniqueConstraint("thread_id", "number", name=op.f("uq_generations_thread_id_number"))
    )
    op.create_table("batches",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("session_id", sa.Integer(), nullable=False),
    sa.Column("thread_id", sa.Integer(), nullable=False),
    sa.Column("generation_id", sa.Integer(), nullable=False),
    sa.Column("rig", sa.String(length=200), nullable=False),
    sa.Column("sent_at", sa.DateTime(), nullable=False),
    sa.Column("results_first_at", sa.DateTime(), nullable=True),
    sa.Column("completed_at", sa.DateTime(), nullable=True),
    sa.Column("status", sa.Enum("sent", "complete", "timed_out", name="batchstatus", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], name=op.f("fk_batches_generation_id_generations")),
    sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_batches_session_id_sessions")),
    sa.ForeignKeyConstraint(["thread_id"], ["threads.id"], name=op.f("fk_batches_thread_id_threads")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_batches"))
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batches_generation_id"), ["generation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_batches_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_batches_thread_id"), ["thread_id"], unique=False)
    op.create_table("stimuli",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("session_id", sa.Integer(), nullable=False),
    sa.Column("thread_id", sa.Integer(), nullable=True),
    sa.Column("generation_id", sa.Integer(), nullable=True),
    sa.Column("kind", sa.Enum("synthetic", "reference", name="stimuluskind", native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column("index", sa.Integer(), nullable=True),
    sa.Column("code", sa.LargeBinary(), nullable=True),
    sa.Column("content_hash", sa.String(length=64), nullable=False),
    sa.Column("png_path", sa.String(length=200), nullable=False),
    sa.Column("generator", sa.String(length=100), nullable=True),
    sa.Column("generator_version", sa.String(length=100), nullable=True),
    sa.Column("weights_sha256", sa.String(length=64), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], name=op.f("fk_stimuli_generation_id_generations")),
    sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_stimuli_session_id_sessions")),
    sa.ForeignKeyConstraint(["thread_id"], ["threads.id"], name=op.f("fk_stimuli_thread_id_threads")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_stimuli"))
    )
    with op.batch_alter_table("stimuli", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stimuli_content_hash"), ["content_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_stimuli_generation_id"), ["generation_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_stimuli_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_stimuli_thread_id"), ["thread_id"], unique=False)
    op.create_table("presentations",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("presentation_id", sa.String(length=64), nullable=False),
    sa.Column("stimulus_id", sa.String(length=64), nullable=False),
    sa.Column("batch_id", sa.String(length=64), nullable=False),
    sa.Column("rig", sa.String(length=200), nullable=False),
    sa.Column("onset", sa.Float(), nullable=False),
    sa.Column("rates_json", sa.JSON(), nullable=False),
    sa.Column("window_start_ms", sa.Float(), nullable=False),
    sa.Column("window_end_ms", sa.Float(), nullable=False),
    sa.Column("received_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_presentations_batch_id_batches")),
    sa.ForeignKeyConstraint(["stimulus_id"], ["stimuli.id"], name=op.f("fk_presentations_stimulus_id_stimuli")),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_presentations")),
    sa.UniqueConstraint("presentation_id", name=op.f("uq_presentations_presentation_id"))
    )
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_presentations_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_presentations_stimulus_id"), ["stimulus_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_presentations_stimulus_id"))
        batch_op.drop_index(batch_op.f("ix_presentations_batch_id"))
    op.drop_table("presentations")
    with op.batch_alter_table("stimuli", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stimuli_thread_id"))
        batch_op.drop_index(batch_op.f("ix_stimuli_session_id"))
        batch_op.drop_index(batch_op.f("ix_stimuli_generation_id"))
        batch_op.drop_index(batch_op.f("ix_stimuli_content_hash"))
    op.drop_table("stimuli")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batches_thread_id"))
        batch_op.drop_index(batch_op.f("ix_batches_session_id"))
        batch_op.drop_index(batch_op.f("ix_batches_generation_id"))
    op.drop_table("batches")
    op.drop_table("generations")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_thread_id"))
        batch_op.drop_index(batch_op.f("ix_events_session_id"))
    op.drop_table("events")
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_threads_session_id"))
    op.drop_table("threads")
    op.drop_table("sessions")
