"""retention: a session's last measured workspace size, and when retention deleted its files

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 16:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("workspace_bytes", "workspace_measured_at", "files_deleted_at")


def upgrade() -> None:
    op.add_column("sessions", sa.Column("workspace_bytes", sa.BigInteger(), nullable=True))
    op.add_column(
        "sessions", sa.Column("workspace_measured_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "sessions", sa.Column("files_deleted_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("sessions", column)
