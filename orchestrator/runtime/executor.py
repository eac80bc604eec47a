"""Execute one run: claim it, run the CLI in the session's container, record the outcome.

Idempotent by construction: the run's state in PostgreSQL decides whether anything
happens, so a redelivered task never starts the CLI a second time. Runs of one session
go strictly in ``seq`` order; a run whose turn has not come raises :class:`NotYourTurn`
and its task retries later without holding a worker slot.

The path goes one way: claim, prepare the container, run the CLI, record, and announce
(``orchestrator.domain.run_lifecycle``). Whatever else reacts to a run (batches,
webhooks) listens to those announcements; the executor does not call it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session as DbSession

from orchestrator.auth import session_tokens
from orchestrator.db.engine import ROW_LOCK
from orchestrator.db.models import Run, RunStatus, Session, SessionStatus
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import tree
from orchestrator.domain.admission import admit
from orchestrator.domain.budgets import BUDGET_EXCEEDED, refusal_of
from orchestrator.domain.cancellation import cancel_signalled
from orchestrator.domain.isolation import ResourceLimits, SessionIsolation
from orchestrator.domain.run_endings import finish_without_cli
from orchestrator.domain.run_lifecycle import RunFinished, RunListeners, RunRecording, RunStarted
from orchestrator.redaction import RedactingSink, Redactor
from orchestrator.runtime import leases
from orchestrator.runtime.claude_cli import CliEvent, CliOptions, build_command, cli_environment
from orchestrator.runtime.cli_runner import CliRunResult, StopReason, ensure_no_cli, run_cli
from orchestrator.runtime.containers import ContainerLimits, SessionContainerSpec, SessionDirs
from orchestrator.runtime.egress import proxy_environment, session_network_policy
from orchestrator.runtime.host import HostResources
from orchestrator.runtime.labels import LABEL_BATCH
from orchestrator.runtime.leases import RunLease
from orchestrator.runtime.locks import SessionLock, lock_ttl_ms
from orchestrator.runtime.lost_runs import LostRuns
from orchestrator.runtime.session_setup import MCP_CONFIG_PATH, SessionContext, write_session_files
from orchestrator.secrets import SecretStore
from orchestrator.storable import storable_text
from orchestrator.streams import gateway_notices
from orchestrator.streams.events import (
    RUN_FINISHED,
    EventsNotStored,
    PendingEvent,
    RunEventSink,
    StoreUnavailable,
    WireEvent,
    next_run_seq,
    persist_events,
    publish_pending,
    run_finished_data,
)

log = logging.getLogger(__name__)

FINAL_STATES = frozenset(s.value for s in RunStatus if s.is_final)


class NotYourTurn(Exception):
    """An earlier run of the same session is still queued or running."""


class StillRunning(Exception):
    """Another delivery of this run holds it (its lease or the session lock is live):
    look again once they could have run out, in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunLost(Exception):
    """The run is ``running`` but whoever ran it is gone: settle it by the lost-run rule."""


# How long a run whose CLI has ended waits for PostgreSQL to record its outcome.
RECORD_PATIENCE_SECONDS = 600.0

# A run's session token outlives the run's own time limit by this much at most; the
# executor revokes it as soon as the run is recorded.
TOKEN_TTL_MARGIN = timedelta(minutes=10)


@dataclass(frozen=True)
class ClaimedRun:
    run_id: uuid.UUID
    session_id: uuid.UUID
    owner: str
    parent_id: uuid.UUID | None
    # Root first, this session last: where its directories lie (SessionDirs).
    lineage: list[uuid.UUID]
    depth: int
    prompt: str
    options: CliOptions
    first_event_seq: int
    # The run's credential at the gateway (model calls and ccq's tools), valid during
    # this run only; never logged (repr=False).
    session_token: str = field(repr=False)
    # A batch item's batch: its container is removed as soon as the run ends (thousands
    # would idle), and the run's announcements carry it.
    batch_id: uuid.UUID | None = None
    # The names of the secrets the session holds; their values are looked up on this
    # worker when the CLI starts and travel nowhere else.
    secret_names: tuple[str, ...] = ()
    # The session's own container limits (None each: the operator's default).
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    # This delivery's name on the run's lease and the session lock.
    holder: str = ""

    @property
    def one_shot(self) -> bool:
        return self.batch_id is not None


def _cli_options(session: Session, run: Run) -> CliOptions:
    opts: dict[str, Any] = {**session.options, **run.options}
    return CliOptions(
        model=opts.get("model") or session.model,
        append_system_prompt=opts.get("append_system_prompt"),
        max_turns=opts.get("max_turns"),
        allowed_tools=tuple(opts.get("allowed_tools") or ()),
        disallowed_tools=tuple(opts.get("disallowed_tools") or ()),
        mcp_config_path=MCP_CONFIG_PATH,
    )


def transcript_path(dirs: SessionDirs, session_id: uuid.UUID) -> Path:
    """Where the CLI keeps the conversation (cwd /workspace → project dir ``-workspace``)."""
    return dirs.claude_home / "projects" / "-workspace" / f"{session_id}.jsonl"


class RunExecutor:
    """Runs prompts on this worker host. One instance per worker process."""

    def __init__(
        self,
        host: HostResources,
        listeners: RunListeners | None = None,
        secrets: SecretStore | None = None,
        lost_runs: LostRuns | None = None,
    ) -> None:
        self.settings = host.settings
        self.session_factory = host.session_factory
        self.redis = host.redis
        self.runtime = host.runtime
        self.listeners = listeners or RunListeners()
        # Loaded once per worker process (CCQ_SECRET_* and CCQ_SECRETS_FILE).
        self.secrets = secrets if secrets is not None else SecretStore.load(self.settings)
        # A redelivery that finds its run lost settles it (and runs it again, if the rule
        # queues it) itself, without dispatching it.
        self.lost_runs = lost_runs or LostRuns(self.redis, self.runtime, self.listeners)

    # --- claim ---------------------------------------------------------------------------

    def _claim(
        self, uow: UnitOfWork, run_id: uuid.UUID, holder: str
    ) -> tuple[ClaimedRun | None, SessionLock | None, str]:
        """Mark the run running if it is its turn, and commit; return it, the session lock
        and a status.

        A run that ends here (cancelled while queued, lost too often) has its
        ``ccq.run.finished`` published once this transaction commits.
        """
        outbox: list[PendingEvent] = []
        uow.after_commit(lambda db: publish_pending(self.redis, db, outbox))
        try:
            answer = self._claim_in(uow.db, run_id, holder, outbox)
        except BaseException:
            uow.rollback()
            raise
        session_lock = answer[1]
        try:
            uow.commit()
        except BaseException:
            if session_lock is not None:  # not claimed after all: nobody may wait on it
                with contextlib.suppress(redis.RedisError):
                    session_lock.release()
            raise
        return answer

    def _claim_in(
        self, db: DbSession, run_id: uuid.UUID, holder: str, outbox: list[PendingEvent]
    ) -> tuple[ClaimedRun | None, SessionLock | None, str]:
        run = db.get(Run, run_id)
        if run is None:
            return None, None, "missing"
        # Lock order everywhere: session row, then run row.
        session = db.get(Session, run.session_id, with_for_update=ROW_LOCK)
        db.refresh(run, with_for_update=ROW_LOCK)
        assert session is not None
        if RunStatus(run.status).is_final:
            return None, None, run.status
        if run.status == RunStatus.RUNNING:
            self._check_lost(db, run)  # raises: a live delivery has it, or it was lost
        if run.cancel_requested:
            finish_without_cli(db, run, session, RunStatus.CANCELLED, None, outbox)
            return None, None, RunStatus.CANCELLED
        earlier = db.scalar(
            select(Run.id)
            .where(
                Run.session_id == session.id,
                Run.seq < run.seq,
                Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
            )
            .limit(1)
        )
        if earlier is not None:
            raise NotYourTurn(f"run {earlier} of session {session.id} goes first")
        admit(db, session, self.settings.max_runs_per_owner)
        session_lock = SessionLock(
            self.redis, session.id, holder, ttl_ms=int(self.settings.run_lease_seconds * 1000)
        )
        if not session_lock.acquire():
            raise NotYourTurn(f"session {session.id} is busy")
        run.status = RunStatus.RUNNING
        run.attempts += 1
        run.started_at = datetime.now(UTC)
        leases.take(db, run, holder, self.settings.run_lease_seconds)
        session.status = SessionStatus.RUNNING
        session.last_active_at = run.started_at
        session_tokens.revoke_run(db, run.id)  # a dead worker's delivery minted one
        # A taken-over run continues its event numbering after what was persisted.
        isolation = SessionIsolation.of(session.options)
        claimed = ClaimedRun(
            run_id=run.id,
            session_id=session.id,
            owner=session.owner,
            parent_id=session.parent_id,
            lineage=tree.lineage(db, session.id),
            depth=session.depth,
            prompt=run.prompt,
            options=_cli_options(session, run),
            first_event_seq=next_run_seq(db, run.id),
            session_token=session_tokens.mint(
                db,
                session_id=session.id,
                run_id=run.id,
                owner=session.owner,
                ttl=timedelta(seconds=self.settings.run_time_limit) + TOKEN_TTL_MARGIN,
            ),
            batch_id=session.batch_id,
            secret_names=isolation.secrets,
            limits=isolation.limits,
            holder=holder,
        )
        return claimed, session_lock, RunStatus.RUNNING

    def _check_lost(self, db: DbSession, run: Run) -> None:
        """A redelivered ``running`` run: raise :class:`StillRunning` while its lease or
        the session lock is live, else :class:`RunLost`."""
        lock_ms = lock_ttl_ms(self.redis, run.session_id)
        if lock_ms > 0 or not leases.is_expired(db, run):
            wait = max(lock_ms / 1000, self.settings.run_lease_seconds / 3) + 1
            raise StillRunning(f"run {run.id} is running elsewhere", retry_after=wait)
        raise RunLost(f"run {run.id} lost its worker")

    # --- execute -------------------------------------------------------------------------

    def execute(self, run_id: uuid.UUID) -> dict[str, Any]:
        """Run the prompt if it is this run's turn and nobody ran it yet; announce it.

        Returns:
            ``{"run_id", "status"}``: the same shape on every delivery.

        Raises:
            NotYourTurn: an earlier run of the session has not finished.
        """
        with UnitOfWork(self.session_factory) as uow:
            claimed, session_lock, status = self._claim_or_settle(uow, run_id)
            if claimed is not None and session_lock is not None:
                lease = RunLease(
                    self.session_factory,
                    claimed.run_id,
                    claimed.holder,
                    self.settings.run_lease_seconds,
                )
                lease.start()
                try:
                    self.listeners.announce_started(
                        RunStarted(claimed.run_id, claimed.session_id, claimed.batch_id), uow
                    )
                    uow.commit()  # ends the listeners' reads: no transaction idles meanwhile
                    status = self._execute_claimed(uow, claimed, lease)
                finally:
                    lease.stop()
                    session_lock.release()
            if status in FINAL_STATES:
                self.listeners.announce_finished(RunFinished(run_id, status), uow)
        return {"run_id": str(run_id), "status": status}

    def _claim_or_settle(
        self, uow: UnitOfWork, run_id: uuid.UUID
    ) -> tuple[ClaimedRun | None, SessionLock | None, str]:
        """Claim the run; a run lost with its worker is first settled by the rule
        (``orchestrator.runtime.lost_runs``), and claimed if that queued it again."""
        for _ in range(2):
            try:
                return self._claim(uow, run_id, holder=leases.new_holder(run_id))
            except RunLost:
                status = self.lost_runs.settle(uow, run_id)
                if status is None:
                    raise StillRunning(
                        f"run {run_id}: its session is busy", self.settings.run_lease_seconds / 3
                    ) from None
                if status != RunStatus.QUEUED:
                    return None, None, status
        raise StillRunning(f"run {run_id} was lost again", self.settings.run_lease_seconds / 3)

    def _persist(self, uow: UnitOfWork, events: list[WireEvent], lease: RunLease) -> None:
        """Store a batch of the run's events; see :class:`StoreUnavailable` for outages.

        Raises:
            StoreUnavailable: PostgreSQL is unreachable; the sink keeps the events.
            EventsNotStored: they cannot be stored (the run ends, saying why).
        """
        if lease.lost.is_set():
            return  # the run was settled without this worker: its history is closed
        try:
            persist_events(uow.db, events)
            uow.commit()
        except IntegrityError:
            # The session was deleted mid-run: its history goes with it.
            uow.rollback()
            log.info("dropped %d events of a deleted session", len(events))
        except (OperationalError, InterfaceError) as exc:
            uow.rollback()
            raise StoreUnavailable(str(exc)) from exc
        except SQLAlchemyError as exc:
            uow.rollback()
            raise EventsNotStored(f"the run's events could not be stored: {exc}") from exc

    def _execute_claimed(self, uow: UnitOfWork, claimed: ClaimedRun, lease: RunLease) -> str:
        # Every event, the result and the error leave with the run's secrets and token
        # redacted.
        redactor = Redactor.for_run(
            self.secrets.present(claimed.secret_names), claimed.session_token
        )
        sink = RedactingSink(
            self.redis,
            lambda events: self._persist(uow, events, lease),
            claimed.session_id,
            claimed.run_id,
            claimed.first_event_seq,
            stream_ttl=int(self.settings.event_stream_ttl),
            redactor=redactor,
        )
        sink.emit("ccq.run.started", {"run_id": str(claimed.run_id)})
        dirs = SessionDirs.for_lineage(self.settings.data_dir, [str(i) for i in claimed.lineage])
        result: CliRunResult | None = None
        error: str | None = None
        resume = False
        try:
            dirs.create()
            write_session_files(
                dirs.claude_home,
                SessionContext(
                    session_id=str(claimed.session_id),
                    parent_id=str(claimed.parent_id) if claimed.parent_id else None,
                    depth=claimed.depth,
                    max_depth=self.settings.max_depth,
                ),
                gateway_url=self.settings.gateway_url_for_containers,
            )
            spec = SessionContainerSpec(
                session_id=str(claimed.session_id),
                owner=claimed.owner,
                parent_id=str(claimed.parent_id) if claimed.parent_id else None,
                image=self.settings.worker_image,
                dirs=dirs,
                instance=self.settings.instance,
                network=self.settings.session_network_name,
                network_policy=session_network_policy(self.settings),
                limits=ContainerLimits.of(
                    memory_mb=claimed.limits.memory_mb or self.settings.container_memory_mb,
                    cpus=claimed.limits.cpus or self.settings.container_cpus,
                    pids=claimed.limits.pids or self.settings.container_pids,
                    tmp_mb=self.settings.container_tmp_mb,
                ),
                extra_labels=({LABEL_BATCH: str(claimed.batch_id)} if claimed.batch_id else {}),
            )
            container = self.runtime.ensure_running(spec)
            # Never two CLIs on one session: one an earlier delivery left is ended first.
            if not ensure_no_cli(self.runtime, container):
                container = self.runtime.ensure_running(spec)
            resume = transcript_path(dirs, claimed.session_id).exists()
            result = run_cli(
                self.runtime,
                container,
                run_id=str(claimed.run_id),
                argv=build_command(str(claimed.session_id), resume=resume, options=claimed.options),
                prompt=claimed.prompt,
                env={
                    # The session's secrets first: ccq's own variables win.
                    **self.secrets.values_for(claimed.secret_names),
                    **cli_environment(self.settings, claimed.session_token),
                    **proxy_environment(self.settings, claimed.session_token),
                },
                on_event=lambda e: self._forward(sink, e),
                silence_timeout=self.settings.run_silence_timeout,
                time_limit=self.settings.run_time_limit,
                should_cancel=lambda: lease.lost.is_set() or self._cancel_requested(claimed.run_id),
                on_tick=lambda: self._tick(sink, claimed.run_id),
            )
            sink.release()  # text held back for redaction: the CLI's output has ended
        except Exception as exc:  # the run must end recorded, whatever broke
            error = redactor.text(f"{type(exc).__name__}: {exc}")
            # The traceback goes redacted: an exception's text may quote the values.
            log.error(
                "run %s failed outside the CLI: %s",
                claimed.run_id,
                redactor.text(traceback.format_exc()),
            )
            uow.rollback()  # a failed flush of its events leaves the session unusable
            if isinstance(exc, EventsNotStored):
                log.error("run %s: %d events not stored", claimed.run_id, sink.discard_unstored())
        if claimed.one_shot:
            # Before the outcome commits: that commit lets the batch release its next
            # item, whose container must not exist beside this one.
            self._remove_container(claimed.session_id)
        if lease.lost.is_set():
            # Settled meanwhile by the reconciler (this worker looked dead): that stands.
            uow.rollback()
            return self._status_of(uow, claimed.run_id)
        status, stopped = self._record_patiently(
            uow, claimed, result, error, sink, lease, resumed=resume
        )
        if stopped and not claimed.one_shot:
            # Stopped while this run went (the stop could not remove the container then).
            self._remove_container(claimed.session_id)
        return status

    def _remove_container(self, session_id: uuid.UUID) -> None:
        """Remove the session's container (its files stay; a later run makes a new one).
        Called with the session's lock held; a failure leaves it to the reaper."""
        try:
            self.runtime.remove(str(session_id))
        except Exception:
            log.exception("could not remove the container of session %s", session_id)

    def _tick(self, sink: RunEventSink, run_id: uuid.UUID) -> None:
        self._emit_gateway_notices(sink, run_id)
        sink.flush_if_due()

    def _emit_gateway_notices(self, sink: RunEventSink, run_id: uuid.UUID) -> None:
        """The gateway's word on this run (waits, refusals) joins its events here."""
        try:
            notices = gateway_notices.drain(self.redis, run_id)
        except redis.RedisError:
            log.warning("could not read the gateway's notices for run %s", run_id)
            return
        for type_, data in notices:
            sink.emit(type_, data)

    @staticmethod
    def _forward(sink: RunEventSink, event: CliEvent) -> None:
        sink.emit(event.type, event.data)

    def _cancel_requested(self, run_id: uuid.UUID) -> bool:
        return cancel_signalled(self.redis, run_id)

    # --- record --------------------------------------------------------------------------

    def _record(
        self,
        uow: UnitOfWork,
        claimed: ClaimedRun,
        result: CliRunResult | None,
        error: str | None,
        sink: RedactingSink,
        lease: RunLease,
        *,
        resumed: bool,
    ) -> tuple[str, bool]:
        """Commit the run's outcome with its events so far, then announce it.

        ``ccq.run.finished`` goes out only after the commit: whoever sees it finds the run's
        row final and its history complete.

        Returns:
            The run's final status, and whether its session has been stopped meanwhile.
        """
        db = uow.db
        # Before the row locks: emitting may flush (and commit) the events so far, which
        # must not release the locks taken below.
        self._emit_gateway_notices(sink, claimed.run_id)
        session = db.get(Session, claimed.session_id, with_for_update=ROW_LOCK)
        run = db.get(Run, claimed.run_id, with_for_update=ROW_LOCK)
        if session is None or run is None:
            uow.rollback()
            return "deleted", False  # the session was deleted while the run was going
        if run.lease_holder != claimed.holder or run.status != RunStatus.RUNNING:
            # The reconciler settled it while this worker could not renew its lease.
            status = run.status
            uow.rollback()
            return status, False
        lease.stop_renewing()  # the row is locked: nobody settles it now
        leases.clear(run)
        session_tokens.revoke_run(db, run.id)  # the run's tools are gone with it
        status = _final_status(result, error)
        if result is not None:
            o = result.outcome
            run.result_text = sink.redactor.optional(o.result_text)
            run.result_subtype = o.subtype
            run.is_error = o.is_error
            run.total_cost_usd = _run_cost(o.total_cost_usd, session, resumed)
            run.usage = o.usage
            run.num_turns = o.num_turns
            run.duration_ms = o.duration_ms
            run.duration_api_ms = o.duration_api_ms
            run.exit_code = result.exit_code
            if status == RunStatus.FAILED and not o.has_result:
                error = (
                    f"the CLI exited ({result.exit_code}) without a result: "
                    + sink.redactor.text(result.stderr_tail)[-2000:]
                )
            if o.cli_version:
                session.cli_started = True
        if status == RunStatus.FAILED and (refusal := refusal_of(db, run.id)) is not None:
            # The gateway refused a model call over a budget: that is why it failed.
            run.error_code = BUDGET_EXCEEDED
            error = refusal
        run.error = storable_text(sink.redactor.optional(error))  # stderr may hold a NUL
        run.status = status
        run.finished_at = datetime.now(UTC)
        session.total_cost_usd = (session.total_cost_usd or Decimal(0)) + (
            run.total_cost_usd or Decimal(0)
        )
        stopped = session.status == SessionStatus.STOPPED  # a stop during the run stands
        if not stopped:
            session.status = SessionStatus.IDLE
        session.last_active_at = run.finished_at
        sink.persist_pending(db)
        finished = run_finished_data(run)
        db.flush()
        self.listeners.announce_recording(RunRecording(db, run, claimed.batch_id))
        uow.commit()
        sink.stored()
        sink.finish(RUN_FINISHED, finished)
        return status, stopped

    def _record_patiently(
        self,
        uow: UnitOfWork,
        claimed: ClaimedRun,
        result: CliRunResult | None,
        error: str | None,
        sink: RedactingSink,
        lease: RunLease,
        *,
        resumed: bool,
    ) -> tuple[str, bool]:
        """:meth:`_record`, tried again while PostgreSQL is unreachable (the outcome is
        only in this process's memory; the lease and session lock keep the reconciler
        away meanwhile), for at most ``RECORD_PATIENCE_SECONDS``."""
        deadline = time.monotonic() + RECORD_PATIENCE_SECONDS
        delay = 0.5
        while True:
            try:
                return self._record(uow, claimed, result, error, sink, lease, resumed=resumed)
            except (OperationalError, InterfaceError):
                uow.rollback()
                if time.monotonic() > deadline:
                    raise
                log.warning("run %s: PostgreSQL unreachable; recording it again", claimed.run_id)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _status_of(self, uow: UnitOfWork, run_id: uuid.UUID) -> str:
        status = uow.db.scalar(select(Run.status).where(Run.id == run_id)) or "deleted"
        uow.rollback()
        return status


def _run_cost(reported: Decimal | None, session: Session, resumed: bool) -> Decimal | None:
    """This run's own cost from the CLI's ``total_cost_usd``.

    A resumed CLI (2.1.x) restores the conversation's running total and reports that,
    not the run's spend; the session's total so far is exactly that running total (it is
    the sum of the earlier runs' costs), so the difference is this run's.
    """
    if reported is None:
        return None
    already = (session.total_cost_usd or Decimal(0)) if resumed else Decimal(0)
    return max(Decimal(0), reported - already)


def _final_status(result: CliRunResult | None, error: str | None) -> RunStatus:
    if result is None or error is not None:
        return RunStatus.FAILED
    if result.stop_reason is StopReason.CANCELLED:
        return RunStatus.CANCELLED
    if result.stop_reason in (StopReason.SILENCE, StopReason.TIME_LIMIT):
        return RunStatus.TIMED_OUT
    o = result.outcome
    if o.has_result and not o.is_error:
        return RunStatus.SUCCEEDED
    return RunStatus.FAILED
