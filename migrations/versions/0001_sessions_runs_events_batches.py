"""sessions runs events batches

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21 08:04:42.430221
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("defaults", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("total_items", sa.Integer(), nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("notify_url", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("total_cost_usd", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_batches_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint(
            "owner", "idempotency_key", name=op.f("uq_batches_owner_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_batches_owner"), "batches", ["owner"], unique=False)
    op.create_table(
        "sessions",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("parent_id", sa.UUID(), nullable=True),
        sa.Column("root_id", sa.UUID(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.UUID(), nullable=True),
        sa.Column("batch_index", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("options", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("notify_url", sa.Text(), nullable=True),
        sa.Column("cli_started", sa.Boolean(), nullable=False),
        sa.Column("container_id", sa.String(length=100), nullable=True),
        sa.Column("worker_host", sa.String(length=200), nullable=True),
        sa.Column("runs_count", sa.Integer(), nullable=False),
        sa.Column("total_cost_usd", sa.Numeric(precision=14, scale=6), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('starting', 'idle', 'running', 'stopped', 'failed')",
            name=op.f("ck_sessions_status"),
        ),
        sa.CheckConstraint("depth >= 0", name=op.f("ck_sessions_depth_non_negative")),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_sessions_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["sessions.id"],
            name=op.f("fk_sessions_parent_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["root_id"],
            ["sessions.id"],
            name=op.f("fk_sessions_root_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
        sa.UniqueConstraint(
            "owner", "idempotency_key", name=op.f("uq_sessions_owner_idempotency_key")
        ),
    )
    op.create_index(op.f("ix_sessions_batch_id"), "sessions", ["batch_id"], unique=False)
    op.create_index(
        "ix_sessions_owner_created", "sessions", ["owner", "created_at", "id"], unique=False
    )
    op.create_index(op.f("ix_sessions_parent_id"), "sessions", ["parent_id"], unique=False)
    op.create_index(op.f("ix_sessions_root_id"), "sessions", ["root_id"], unique=False)
    op.create_table(
        "runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("options", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("celery_task_id", sa.String(length=100), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("result_text", sa.Text(), nullable=True),
        sa.Column("result_subtype", sa.String(length=100), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=True),
        sa.Column("total_cost_usd", sa.Numeric(precision=14, scale=6), nullable=True),
        sa.Column("usage", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("num_turns", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("duration_api_ms", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')",
            name=op.f("ck_runs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_runs_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint(
            "session_id", "idempotency_key", name=op.f("uq_runs_session_id_idempotency_key")
        ),
        sa.UniqueConstraint("session_id", "seq", name=op.f("uq_runs_session_id_seq")),
    )
    op.create_index("ix_runs_owner_status", "runs", ["owner", "status"], unique=False)
    op.create_index(op.f("ix_runs_session_id"), "runs", ["session_id"], unique=False)
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.UUID(), nullable=False),
        sa.Column("run_id", sa.UUID(), nullable=True),
        sa.Column("stream_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_events_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("session_id", "stream_id", name=op.f("uq_events_session_id_stream_id")),
    )
    op.create_index("ix_events_run_seq", "events", ["run_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_run_seq", table_name="events")
    op.drop_table("events")
    op.drop_index(op.f("ix_runs_session_id"), table_name="runs")
    op.drop_index("ix_runs_owner_status", table_name="runs")
    op.drop_table("runs")
    op.drop_index(op.f("ix_sessions_root_id"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_parent_id"), table_name="sessions")
    op.drop_index("ix_sessions_owner_created", table_name="sessions")
    op.drop_index(op.f("ix_sessions_batch_id"), table_name="sessions")
    op.drop_table("sessions")
    op.drop_index(op.f("ix_batches_owner"), table_name="batches")
    op.drop_table("batches")
