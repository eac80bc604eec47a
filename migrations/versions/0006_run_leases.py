"""faults: a running run's lease (holder, expiry, host, pid) for the reconciler

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("lease_holder", sa.String(200), nullable=True))
    op.add_column("runs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("worker_host", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("worker_pid", sa.Integer(), nullable=True))
    # The reconciler's two questions: which running runs' leases ran out, and which
    # queued runs wait.
    op.create_index("ix_runs_status_lease", "runs", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_lease", table_name="runs")
    for column in ("worker_pid", "worker_host", "lease_expires_at", "lease_holder"):
        op.drop_column("runs", column)
