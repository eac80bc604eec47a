"""gateway: the model-call ledger, metered spend per run, tree and owner-day, error codes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COST = sa.Numeric(14, 6)


def upgrade() -> None:
    op.add_column("sessions", sa.Column("tree_spent_usd", COST, nullable=False, server_default="0"))
    op.add_column("runs", sa.Column("error_code", sa.String(40), nullable=True))
    op.add_column("runs", sa.Column("metered_cost_usd", COST, nullable=False, server_default="0"))
    op.create_table(
        "model_calls",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("lineage", postgresql.ARRAY(postgresql.UUID(as_uuid=True)), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("refusal", sa.Text(), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_creation_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", COST, nullable=False),
        sa.Column("priced", sa.Boolean(), nullable=False),
        sa.Column("upstream_status", sa.Integer(), nullable=True),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('streaming', 'done', 'failed', 'refused')",
            name=op.f("ck_model_calls_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_model_calls_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_model_calls_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_calls")),
    )
    op.create_index("ix_model_calls_run_id", "model_calls", ["run_id"])
    op.create_index("ix_model_calls_owner_started", "model_calls", ["owner", "started_at"])
    op.create_index("ix_model_calls_lineage", "model_calls", ["lineage"], postgresql_using="gin")
    op.create_index(
        "ix_model_calls_streaming",
        "model_calls",
        ["status"],
        postgresql_where=sa.text("status = 'streaming'"),
    )
    op.create_table(
        "owner_spend",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("spent_usd", COST, nullable=False),
        sa.PrimaryKeyConstraint("owner", "day", name=op.f("pk_owner_spend")),
    )


def downgrade() -> None:
    op.drop_table("owner_spend")
    op.drop_table("model_calls")
    op.drop_column("runs", "metered_cost_usd")
    op.drop_column("runs", "error_code")
    op.drop_column("sessions", "tree_spent_usd")
