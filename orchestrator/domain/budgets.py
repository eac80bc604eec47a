"""Live budgets: whether a session's next model call may go upstream, and what it cost.

The gateway asks before every model call and reports after it. Three kinds of scope can
limit a call:

- **a session's** ``max_budget_usd``, which covers the session *and every descendant*
  (checked against ``sessions.tree_spent_usd``, which each charge adds to along the
  caller's whole lineage);
- **the run's** ``max_budget_usd``, when its prompt set one (``runs.metered_cost_usd``);
- **the owner's UTC day**, when ``CCQ_OWNER_DAILY_BUDGET_USD`` is set (``owner_spend``).

**At most one call past the cap.** A call's cost is known only once it has streamed,
and a tree's children call at once. So admission counts the scope's calls still
streaming and reserves for each the most any call of that scope has cost so far: a call
is admitted when nothing of the scope is streaming, or when the spend plus those
reservations plus its own stays under the cap. Otherwise it waits (the gateway asks
again shortly) until the streaming calls are charged. Once the spend reaches the cap the
call is refused, and the refusal is kept on the ledger for the run's record.

**Consistency.** Admission and charging of one tree (and of one owner, when the daily
cap is set) are serialised by transaction-scoped advisory locks, always taken tree first,
then owner: admission never sees a call neither streaming nor charged. The tree's lock
is held only for the few milliseconds of one admission or one charge.

A call left ``streaming`` by a gateway that died stops counting as in flight after
:data:`STALE_STREAM`; its cost is lost (the upstream may have charged it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import ModelCall, ModelCallStatus, OwnerSpend, Run, Session
from orchestrator.domain import tree
from orchestrator.domain.pricing import Charge, Usage

STALE_STREAM = timedelta(minutes=30)
BUDGET_EXCEEDED = "budget_exceeded"


@dataclass(frozen=True)
class Caller:
    """The run a model call is made for (from its verified session token)."""

    run_id: uuid.UUID
    session_id: uuid.UUID
    owner: str


@dataclass(frozen=True)
class Limit:
    """A budget a call ran into."""

    scope: str  # "session", "run" or "owner"
    subject: str
    budget: Decimal
    spent: Decimal

    def message(self) -> str:
        where = {
            "session": f"the session tree under {self.subject}",
            "run": f"run {self.subject}",
            "owner": "this owner today (UTC)",
        }[self.scope]
        return (
            f"ccq budget exceeded: {where} has spent ${self.spent:.4f} of its "
            f"${self.budget:.4f} budget; no further model calls are allowed"
        )


class Verdict(StrEnum):
    ADMIT = "admit"
    WAIT = "wait"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    call_id: int | None = None  # the ledger row of an admitted call
    limit: Limit | None = None  # what refused it, or what it waits for


@dataclass(frozen=True)
class _Scope:
    limit: Limit
    in_flight: Any  # a SQL condition: the scope's calls


class Budgets:
    """Admission and charging of model calls against every budget that applies."""

    def __init__(self, owner_daily_budget_usd: float | None) -> None:
        self.owner_daily = (
            Decimal(str(owner_daily_budget_usd)) if owner_daily_budget_usd is not None else None
        )

    def admit(self, db: DbSession, caller: Caller) -> Admission:
        """Decide one call. A call that some budget covers is on the ledger as
        ``streaming`` once admitted; one that none covers takes no lock and writes
        nothing until it is charged (``call_id`` None).

        The caller commits (and on :attr:`Verdict.WAIT` simply asks again later).
        """
        lineage = tree.lineage(db, caller.session_id)
        if not lineage:
            return Admission(Verdict.REFUSE, limit=None)
        if not self._scopes(db, caller, lineage):
            return Admission(Verdict.ADMIT)
        self._lock(db, lineage, caller.owner)
        scopes = self._scopes(db, caller, lineage)  # again, under the lock
        verdict, limit = Verdict.ADMIT, None
        for scope in scopes:
            scope_verdict = self._judge(db, scope)
            if scope_verdict is Verdict.REFUSE:
                verdict, limit = Verdict.REFUSE, scope.limit
                break
            if scope_verdict is Verdict.WAIT:
                verdict, limit = Verdict.WAIT, scope.limit
        if verdict is Verdict.WAIT:
            return Admission(verdict, limit=limit)
        call = ModelCall(
            run_id=caller.run_id,
            session_id=caller.session_id,
            owner=caller.owner,
            lineage=lineage,
            status=ModelCallStatus.REFUSED if limit else ModelCallStatus.STREAMING,
            refusal=limit.message() if limit else None,
            finished_at=datetime.now(UTC) if limit else None,
        )
        db.add(call)
        db.flush()
        return Admission(verdict, call_id=call.id, limit=limit)

    def charge(
        self,
        db: DbSession,
        call_id: int | None,
        *,
        caller: Caller,
        model: str | None,
        usage: Usage,
        charge: Charge,
        upstream_status: int | None,
    ) -> None:
        """Record a call's tokens and cost, and add the cost to its run, every session of
        its lineage, and its owner's day. Idempotent: a call is charged once. A call
        admitted untracked (``call_id`` None) is written to the ledger here."""
        if call_id is None:
            lineage = tree.lineage(db, caller.session_id)
            if not lineage:
                return  # the session was deleted meanwhile: its ledger went with it
            untracked = ModelCall(
                run_id=caller.run_id,
                session_id=caller.session_id,
                owner=caller.owner,
                lineage=lineage,
                status=ModelCallStatus.STREAMING,
            )
            db.add(untracked)
            db.flush()
            call_id = untracked.id
        call = db.get(ModelCall, call_id)
        if call is None or call.status != ModelCallStatus.STREAMING:
            return
        self._lock(db, call.lineage, call.owner)
        call = db.get(ModelCall, call_id, populate_existing=True, with_for_update=True)
        if call is None or call.status != ModelCallStatus.STREAMING:
            return
        call.status = ModelCallStatus.DONE
        call.model = model
        call.input_tokens = usage.input_tokens
        call.output_tokens = usage.output_tokens
        call.cache_creation_input_tokens = usage.cache_creation_input_tokens
        call.cache_read_input_tokens = usage.cache_read_input_tokens
        call.cost_usd = charge.cost_usd
        call.priced = charge.priced
        call.upstream_status = upstream_status
        call.finished_at = datetime.now(UTC)
        cost = charge.cost_usd
        # Sessions before the run: the order the worker locks them in when it records a
        # run (its session, then the run). The other order deadlocked with a recording
        # run whose last call was being charged.
        db.execute(
            update(Session)
            .where(Session.id.in_(call.lineage))
            .values(tree_spent_usd=Session.tree_spent_usd + cost)
        )
        db.execute(
            update(Run)
            .where(Run.id == call.run_id)
            .values(metered_cost_usd=Run.metered_cost_usd + cost)
        )
        day = call.finished_at.date()
        db.execute(
            insert(OwnerSpend)
            .values(owner=call.owner, day=day, spent_usd=cost)
            .on_conflict_do_update(
                index_elements=[OwnerSpend.owner, OwnerSpend.day],
                set_={"spent_usd": OwnerSpend.spent_usd + cost},
            )
        )

    def fail(self, db: DbSession, call_id: int, upstream_status: int | None) -> None:
        """A call that produced nothing to charge (refused upstream, client gone)."""
        db.execute(
            update(ModelCall)
            .where(ModelCall.id == call_id, ModelCall.status == ModelCallStatus.STREAMING)
            .values(
                status=ModelCallStatus.FAILED,
                upstream_status=upstream_status,
                finished_at=datetime.now(UTC),
            )
        )

    # --- scopes ------------------------------------------------------------------------

    def _lock(self, db: DbSession, lineage: list[uuid.UUID], owner: str) -> None:
        """The tree's lock, then the owner's: the one order every caller uses."""
        keys = [f"ccq-budget-tree:{lineage[0]}"]
        if self.owner_daily is not None:
            keys.append(f"ccq-budget-owner:{owner}")
        for key in keys:
            db.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})

    def _scopes(self, db: DbSession, caller: Caller, lineage: list[uuid.UUID]) -> list[_Scope]:
        scopes: list[_Scope] = []
        rows = db.execute(
            select(Session.id, Session.options, Session.tree_spent_usd).where(
                Session.id.in_(lineage)
            )
        ).all()
        for session_id, options, spent in rows:
            budget = _budget(options)
            if budget is not None:
                scopes.append(
                    _Scope(
                        Limit("session", str(session_id), budget, spent),
                        ModelCall.lineage.contains([session_id]),
                    )
                )
        run = db.execute(
            select(Run.options, Run.metered_cost_usd).where(Run.id == caller.run_id)
        ).one_or_none()
        if run is not None and (budget := _budget(run.options)) is not None:
            scopes.append(
                _Scope(
                    Limit("run", str(caller.run_id), budget, run.metered_cost_usd),
                    ModelCall.run_id == caller.run_id,
                )
            )
        if self.owner_daily is not None:
            today = datetime.now(UTC).date()
            spent = db.scalar(
                select(OwnerSpend.spent_usd).where(
                    OwnerSpend.owner == caller.owner, OwnerSpend.day == today
                )
            )
            start = datetime(today.year, today.month, today.day, tzinfo=UTC)
            scopes.append(
                _Scope(
                    Limit("owner", caller.owner, self.owner_daily, spent or Decimal(0)),
                    (ModelCall.owner == caller.owner) & (ModelCall.started_at >= start),
                )
            )
        return scopes

    @staticmethod
    def _judge(db: DbSession, scope: _Scope) -> Verdict:
        limit = scope.limit
        if limit.spent >= limit.budget:
            return Verdict.REFUSE
        since = datetime.now(UTC) - STALE_STREAM
        streaming, most = db.execute(
            select(
                func.count().filter(
                    ModelCall.status == ModelCallStatus.STREAMING, ModelCall.started_at > since
                ),
                func.max(ModelCall.cost_usd).filter(ModelCall.status == ModelCallStatus.DONE),
            ).where(scope.in_flight)
        ).one()
        if not streaming:
            return Verdict.ADMIT
        reserve = (most or Decimal(0)) * (streaming + 1)
        return Verdict.ADMIT if limit.spent + reserve < limit.budget else Verdict.WAIT


def _budget(options: dict[str, Any] | None) -> Decimal | None:
    value = (options or {}).get("max_budget_usd")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return Decimal(str(value))
    return None


def refusal_of(db: DbSession, run_id: uuid.UUID) -> str | None:
    """Why a budget refused one of the run's model calls, if one did."""
    return db.scalar(
        select(ModelCall.refusal)
        .where(ModelCall.run_id == run_id, ModelCall.status == ModelCallStatus.REFUSED)
        .order_by(ModelCall.id)
        .limit(1)
    )
