"""events: stream order as numbers, for history ranges and tail gap fills

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("stream_ms", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("stream_n", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE events SET stream_ms = split_part(stream_id, '-', 1)::bigint,"
        " stream_n = split_part(stream_id, '-', 2)::bigint"
    )
    op.alter_column("events", "stream_ms", nullable=False)
    op.alter_column("events", "stream_n", nullable=False)
    op.create_index(
        "ix_events_session_stream", "events", ["session_id", "stream_ms", "stream_n"]
    )
    op.create_index("ix_events_run_stream", "events", ["run_id", "stream_ms", "stream_n"])


def downgrade() -> None:
    op.drop_index("ix_events_run_stream", table_name="events")
    op.drop_index("ix_events_session_stream", table_name="events")
    op.drop_column("events", "stream_n")
    op.drop_column("events", "stream_ms")
