"""children: fan-outs, each child's place in its fan-out, and session-scoped tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fanouts",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("then_prompt", sa.Text(), nullable=False),
        sa.Column("child_count", sa.Integer(), nullable=False),
        sa.Column("followup_run_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'cancelled')", name=op.f("ck_fanouts_status")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_fanouts_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["followup_run_id"],
            ["runs.id"],
            name=op.f("fk_fanouts_followup_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fanouts")),
        sa.UniqueConstraint(
            "session_id", "idempotency_key", name=op.f("uq_fanouts_session_id_idempotency_key")
        ),
    )
    op.create_index("ix_fanouts_session_id", "fanouts", ["session_id"])
    op.create_index("ix_fanouts_status", "fanouts", ["status"])

    op.add_column("sessions", sa.Column("fanout_id", postgresql.UUID(as_uuid=True)))
    op.add_column("sessions", sa.Column("fanout_index", sa.Integer()))
    op.create_foreign_key(
        op.f("fk_sessions_fanout_id_fanouts"),
        "sessions",
        "fanouts",
        ["fanout_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index("ix_sessions_fanout_id", "sessions", ["fanout_id"])

    op.create_table(
        "session_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_session_tokens_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_session_tokens_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_session_tokens")),
    )
    op.create_index("ix_session_tokens_run_id", "session_tokens", ["run_id"])
    op.create_index("ix_session_tokens_session_id", "session_tokens", ["session_id"])
    op.create_index("ix_session_tokens_expires_at", "session_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("session_tokens")
    op.drop_index("ix_sessions_fanout_id", table_name="sessions")
    op.drop_constraint(op.f("fk_sessions_fanout_id_fanouts"), "sessions", type_="foreignkey")
    op.drop_column("sessions", "fanout_index")
    op.drop_column("sessions", "fanout_id")
    op.drop_index("ix_fanouts_status", table_name="fanouts")
    op.drop_index("ix_fanouts_session_id", table_name="fanouts")
    op.drop_table("fanouts")
