"""The relational model: sessions, runs, events and batches (SQLAlchemy 2, typed).

The schema is created only by Alembic migrations (``migrations/``); these classes describe
it for queries. States are plain strings checked by the database, so a new state is a
migration, not an enum type dance.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names make migrations and their downgrades predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Cost = Numeric(14, 6)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


class SessionStatus(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class FanoutStatus(StrEnum):
    RUNNING = "running"  # children still going; the parent has not been resumed
    FINISHED = "finished"  # every child ended; the parent's follow-up run is queued
    CANCELLED = "cancelled"  # the parent was stopped, cancelled or deleted first


class BatchStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Batch(Base):
    """Many independent prompts submitted together; each item is a session."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(_in("status", BatchStatus), name="status"),
        UniqueConstraint("owner", "idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20), default=BatchStatus.RUNNING)
    defaults: Mapped[dict[str, Any]] = mapped_column(default=dict)
    total_items: Mapped[int] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)
    notify_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    total_cost_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Session(Base):
    """One Claude Code conversation, living in its own container and workspace."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(_in("status", SessionStatus), name="status"),
        CheckConstraint("depth >= 0", name="depth_non_negative"),
        UniqueConstraint("owner", "idempotency_key"),
        Index("ix_sessions_owner_created", "owner", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    # The root of the tree (itself for a root session): tree limits and tree cost.
    root_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    depth: Mapped[int] = mapped_column(Integer, default=0)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), index=True
    )
    batch_index: Mapped[int | None] = mapped_column(Integer)
    # The fan-out that created this child, and its place among that fan-out's prompts.
    fanout_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("fanouts.id", ondelete="SET NULL", use_alter=True), index=True
    )
    fanout_index: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=SessionStatus.STARTING)
    model: Mapped[str | None] = mapped_column(String(200))
    # CLI options: append_system_prompt, max_turns, max_budget_usd, allowed_tools, ...
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    notify_url: Mapped[str | None] = mapped_column(Text)
    # True once the CLI has created the conversation: later runs pass --resume.
    cli_started: Mapped[bool] = mapped_column(Boolean, default=False)
    container_id: Mapped[str | None] = mapped_column(String(100))
    # The worker host holding the workspace; its runs are routed to that host's queue.
    worker_host: Mapped[str | None] = mapped_column(String(200))
    runs_count: Mapped[int] = mapped_column(Integer, default=0)
    total_cost_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))
    # What the gateway metered for this session and all its descendants: what the
    # session's `max_budget_usd` is checked against.
    tree_spent_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    last_active_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The workspace's size in bytes as beat's retention pass last measured it (None: not
    # yet), and when; see orchestrator.runtime.workspaces.
    workspace_bytes: Mapped[int | None] = mapped_column(BigInteger)
    workspace_measured_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When retention deleted the files of the session's tree (CCQ_WORKSPACE_RETENTION_DAYS):
    # its rows stay, and it takes no more prompts.
    files_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    runs: Mapped[list[Run]] = relationship(
        back_populates="session", order_by="Run.seq", passive_deletes=True
    )


class Run(Base):
    """One prompt to a session; a Celery task carries only its ID."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RunStatus), name="status"),
        UniqueConstraint("session_id", "seq"),
        UniqueConstraint("session_id", "idempotency_key"),
        Index("ix_runs_owner_status", "owner", "status"),
        Index("ix_runs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    # Denormalised from the session: per-owner concurrency without a join.
    owner: Mapped[str] = mapped_column(String(200))
    # Accepted order within the session; runs execute strictly in this order.
    seq: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.QUEUED)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    celery_task_id: Mapped[str | None] = mapped_column(String(100))
    # A batch item's run is handed to Celery only when its batch has room (see
    # orchestrator.domain.batches.BatchService.release); until then it waits in PostgreSQL.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Deliveries that started this run; bounds requeue loops after worker deaths.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # While running: the worker's lease (orchestrator.runtime.leases), renewed by it; a
    # run whose lease ran out is settled by beat's reconciler.
    lease_holder: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Filled from the CLI's final `result` message.
    result_text: Mapped[str | None] = mapped_column(Text)
    result_subtype: Mapped[str | None] = mapped_column(String(100))
    is_error: Mapped[bool | None] = mapped_column(Boolean)
    total_cost_usd: Mapped[Decimal | None] = mapped_column(Cost)
    usage: Mapped[dict[str, Any] | None] = mapped_column()
    num_turns: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    duration_api_ms: Mapped[int | None] = mapped_column(Integer)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Why a run failed, for programs (``budget_exceeded``); ``error`` says it in words.
    error_code: Mapped[str | None] = mapped_column(String(40))
    # The gateway's metering of this run's model calls (``total_cost_usd`` is the CLI's).
    metered_cost_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    session: Mapped[Session] = relationship(back_populates="runs")


class Fanout(Base):
    """N child sessions started together; their parent is resumed once all have ended."""

    __tablename__ = "fanouts"
    __table_args__ = (
        CheckConstraint(_in("status", FanoutStatus), name="status"),
        UniqueConstraint("session_id", "idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(200))
    # The parent: it gets the follow-up run carrying every child's result.
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20), default=FanoutStatus.RUNNING, index=True)
    then_prompt: Mapped[str] = mapped_column(Text)
    child_count: Mapped[int] = mapped_column(Integer)
    followup_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL")
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SessionToken(Base):
    """A bearer token the session's MCP tools use during one run; only its hash is kept."""

    __tablename__ = "session_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = _now()


class ModelCallStatus(StrEnum):
    STREAMING = "streaming"  # admitted, upstream answer in progress
    DONE = "done"  # answered and charged
    FAILED = "failed"  # no answer to charge (upstream error, client gone before it)
    REFUSED = "refused"  # a budget refused it; never sent upstream


class ModelCall(Base):
    """One model call a session made through the gateway: the spend ledger."""

    __tablename__ = "model_calls"
    __table_args__ = (
        CheckConstraint(_in("status", ModelCallStatus), name="status"),
        Index("ix_model_calls_owner_started", "owner", "started_at"),
        # "Calls anywhere under session X": the budget of X covers its whole subtree.
        Index("ix_model_calls_lineage", "lineage", postgresql_using="gin"),
        Index(
            "ix_model_calls_streaming",
            "status",
            postgresql_where="status = 'streaming'",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(200))
    # The session's ancestors and itself, root first.
    lineage: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)))
    status: Mapped[str] = mapped_column(String(20), default=ModelCallStatus.STREAMING)
    refusal: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))
    # False: the model was not in the price table and was charged at its highest prices.
    priced: Mapped[bool] = mapped_column(Boolean, default=True)
    upstream_status: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OwnerSpend(Base):
    """What one owner's model calls cost on one UTC day (the daily cap's counter)."""

    __tablename__ = "owner_spend"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    spent_usd: Mapped[Decimal] = mapped_column(Cost, default=Decimal(0))


class Event(Base):
    """One line of CLI output or one ccq lifecycle event, persisted from the Redis stream."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("session_id", "stream_id"),
        Index("ix_events_run_seq", "run_id", "seq"),
        # Stream order: history pages and tails fill gaps by (ms, n) ranges.
        Index("ix_events_session_stream", "session_id", "stream_ms", "stream_n"),
        Index("ix_events_run_stream", "run_id", "stream_ms", "stream_n"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    # The Redis stream entry ID ("<ms>-<n>"): the cursor clients resume from.
    stream_id: Mapped[str] = mapped_column(String(40))
    # The same ID as numbers, because "<ms>-<n>" strings do not sort as IDs do.
    stream_ms: Mapped[int] = mapped_column(BigInteger)
    stream_n: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(100))
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = _now()
