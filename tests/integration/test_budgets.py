"""The budget rules (orchestrator.domain.budgets) against real PostgreSQL, one call at a
time: which scope limits a call, when it waits, when it is refused, what a charge adds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.engine import session_scope
from orchestrator.db.models import ModelCall, ModelCallStatus, OwnerSpend, Run, Session
from orchestrator.domain.budgets import STALE_STREAM, Budgets, Caller, Verdict, refusal_of
from orchestrator.domain.pricing import Charge, Usage

pytestmark = pytest.mark.integration

USAGE = Usage(input_tokens=1000, output_tokens=100)


class Tree:
    """A root and a child with a run each, of a fresh owner."""

    def __init__(
        self,
        db_factory: sessionmaker[DbSession],
        root_budget: float | None,
        owner: str | None = None,
    ) -> None:
        self.db_factory = db_factory
        self.owner = owner or f"budget-{uuid.uuid4().hex[:8]}"
        with session_scope(db_factory) as db:
            root = self._session(db, None, {"max_budget_usd": root_budget} if root_budget else {})
            child = self._session(db, root, {})
            self.root, self.child = root.id, child.id
            self.root_run = self._run(db, root.id, {}).id
            self.child_run = self._run(db, child.id, {}).id

    def _session(self, db: DbSession, parent: Session | None, options: dict[str, Any]) -> Session:
        session = Session(
            owner=self.owner,
            parent_id=parent.id if parent else None,
            root_id=parent.id if parent else None,
            depth=1 if parent else 0,
            options=options,
        )
        db.add(session)
        db.flush()
        return session

    def _run(self, db: DbSession, session_id: uuid.UUID, options: dict[str, Any]) -> Run:
        run = Run(session_id=session_id, owner=self.owner, seq=1, prompt="p", options=options)
        db.add(run)
        db.flush()
        return run

    def caller(self, *, child: bool = True) -> Caller:
        if child:
            return Caller(self.child_run, self.child, self.owner)
        return Caller(self.root_run, self.root, self.owner)


def calls_of_run(db_factory: sessionmaker[DbSession], run_id: uuid.UUID) -> list[ModelCall]:
    with session_scope(db_factory) as db:
        return list(db.scalars(select(ModelCall).where(ModelCall.run_id == run_id)))


def admit(db_factory: sessionmaker[DbSession], budgets: Budgets, caller: Caller) -> Any:
    with session_scope(db_factory) as db:
        return budgets.admit(db, caller)


def charge(
    db_factory: sessionmaker[DbSession],
    budgets: Budgets,
    call_id: int | None,
    cost: str,
    caller: Caller | None = None,
) -> None:
    with session_scope(db_factory) as db:
        budgets.charge(
            db,
            call_id,
            caller=caller or Caller(uuid.uuid4(), uuid.uuid4(), "unused"),
            model="claude-sonnet-4-5",
            usage=USAGE,
            charge=Charge(Decimal(cost), priced=True),
            upstream_status=200,
        )


def test_without_any_budget_every_call_is_admitted_and_charged_up_the_tree(
    db_factory: sessionmaker[DbSession],
) -> None:
    tree, budgets = Tree(db_factory, None), Budgets(None)
    first = admit(db_factory, budgets, tree.caller())
    second = admit(db_factory, budgets, tree.caller())
    assert (first.verdict, second.verdict) == (Verdict.ADMIT, Verdict.ADMIT)
    # No budget covers them: nothing is written (nor locked) until they are charged.
    assert (first.call_id, second.call_id) == (None, None)
    assert calls_of_run(db_factory, tree.child_run) == []
    charge(db_factory, budgets, None, "0.25", caller=tree.caller())
    (call_id,) = [c.id for c in calls_of_run(db_factory, tree.child_run)]
    charge(db_factory, budgets, call_id, "0.25")  # charged once, whatever the retries
    with session_scope(db_factory) as db:
        assert db.get(Run, tree.child_run).metered_cost_usd == Decimal("0.25")  # type: ignore[union-attr]
        assert db.get(Session, tree.child).tree_spent_usd == Decimal("0.25")  # type: ignore[union-attr]
        assert db.get(Session, tree.root).tree_spent_usd == Decimal("0.25")  # type: ignore[union-attr]
        call = db.get(ModelCall, call_id)
        assert call is not None
        assert (call.status, call.input_tokens, call.output_tokens) == ("done", 1000, 100)
        spent = db.scalar(select(OwnerSpend.spent_usd).where(OwnerSpend.owner == tree.owner))
        assert spent == Decimal("0.25")


def test_a_roots_budget_covers_its_child_and_refuses_once_spent(
    db_factory: sessionmaker[DbSession],
) -> None:
    tree, budgets = Tree(db_factory, 1.0), Budgets(None)
    call = admit(db_factory, budgets, tree.caller())
    assert call.verdict is Verdict.ADMIT
    charge(db_factory, budgets, call.call_id, "1.0")
    refused = admit(db_factory, budgets, tree.caller(child=False))
    assert refused.verdict is Verdict.REFUSE
    assert refused.limit.scope == "session"
    assert refused.limit.subject == str(tree.root)
    with session_scope(db_factory) as db:
        assert "budget exceeded" in (refusal_of(db, tree.root_run) or "")
        assert refusal_of(db, tree.child_run) is None


def test_calls_in_flight_are_reserved_so_the_cap_is_crossed_by_one_call_at_most(
    db_factory: sessionmaker[DbSession],
) -> None:
    tree, budgets = Tree(db_factory, 1.0), Budgets(None)
    first = admit(db_factory, budgets, tree.caller())
    charge(db_factory, budgets, first.call_id, "0.3")  # calls of this tree cost 0.3
    # 0.3 spent: one call streams (reserving 0.3), a second fits (0.3 + 2 x 0.3 < 1).
    a = admit(db_factory, budgets, tree.caller())
    b = admit(db_factory, budgets, tree.caller(child=False))
    assert (a.verdict, b.verdict) == (Verdict.ADMIT, Verdict.ADMIT)
    # A third might cross the cap with the two in flight: it waits instead.
    waiting = admit(db_factory, budgets, tree.caller())
    assert waiting.verdict is Verdict.WAIT
    assert waiting.call_id is None
    charge(db_factory, budgets, a.call_id, "0.3")
    charge(db_factory, budgets, b.call_id, "0.3")
    # 0.9 spent, nothing in flight: the next call may go, and may cross the cap.
    crossing = admit(db_factory, budgets, tree.caller())
    assert crossing.verdict is Verdict.ADMIT
    assert admit(db_factory, budgets, tree.caller()).verdict is Verdict.WAIT
    charge(db_factory, budgets, crossing.call_id, "0.3")
    assert admit(db_factory, budgets, tree.caller()).verdict is Verdict.REFUSE


def test_a_call_a_dead_gateway_left_streaming_stops_holding_the_tree_back(
    db_factory: sessionmaker[DbSession],
) -> None:
    tree, budgets = Tree(db_factory, 1.0), Budgets(None)
    first = admit(db_factory, budgets, tree.caller())
    charge(db_factory, budgets, first.call_id, "0.6")
    orphan = admit(db_factory, budgets, tree.caller())
    assert admit(db_factory, budgets, tree.caller()).verdict is Verdict.WAIT
    with session_scope(db_factory) as db:
        db.execute(
            update(ModelCall)
            .where(ModelCall.id == orphan.call_id)
            .values(started_at=datetime.now(UTC) - STALE_STREAM)
        )
    assert admit(db_factory, budgets, tree.caller()).verdict is Verdict.ADMIT


def test_a_failed_call_costs_nothing_and_frees_its_reservation(
    db_factory: sessionmaker[DbSession],
) -> None:
    tree, budgets = Tree(db_factory, 1.0), Budgets(None)
    first = admit(db_factory, budgets, tree.caller())
    charge(db_factory, budgets, first.call_id, "0.6")
    failed = admit(db_factory, budgets, tree.caller())
    with session_scope(db_factory) as db:
        budgets.fail(db, failed.call_id, 502)
        assert db.get(ModelCall, failed.call_id).status == ModelCallStatus.FAILED  # type: ignore[union-attr]
    assert admit(db_factory, budgets, tree.caller()).verdict is Verdict.ADMIT
    with session_scope(db_factory) as db:
        assert db.get(Session, tree.root).tree_spent_usd == Decimal("0.6")  # type: ignore[union-attr]


def test_a_runs_own_budget_limits_that_run_only(db_factory: sessionmaker[DbSession]) -> None:
    tree, budgets = Tree(db_factory, None), Budgets(None)
    with session_scope(db_factory) as db:
        db.execute(
            update(Run).where(Run.id == tree.child_run).values(options={"max_budget_usd": 0.5})
        )
    call = admit(db_factory, budgets, tree.caller())
    charge(db_factory, budgets, call.call_id, "0.5")
    refused = admit(db_factory, budgets, tree.caller())
    assert refused.verdict is Verdict.REFUSE
    assert refused.limit.scope == "run"
    assert admit(db_factory, budgets, tree.caller(child=False)).verdict is Verdict.ADMIT


def test_the_owners_daily_cap_covers_all_their_trees(db_factory: sessionmaker[DbSession]) -> None:
    budgets = Budgets(owner_daily_budget_usd=1.0)
    first = Tree(db_factory, None)
    call = admit(db_factory, budgets, first.caller())
    charge(db_factory, budgets, call.call_id, "1.0")
    second = Tree(db_factory, None, owner=first.owner)  # another tree of the same owner
    refused = admit(db_factory, budgets, second.caller())
    assert refused.verdict is Verdict.REFUSE
    assert refused.limit.scope == "owner"
    assert "this owner today" in refused.limit.message()
    # Another owner is not touched by it.
    assert admit(db_factory, budgets, Tree(db_factory, None).caller()).verdict is Verdict.ADMIT


def test_a_deleted_session_is_refused_without_a_limit(db_factory: sessionmaker[DbSession]) -> None:
    budgets = Budgets(None)
    ghost = Caller(uuid.uuid4(), uuid.uuid4(), "nobody")
    admission = admit(db_factory, budgets, ghost)
    assert admission.verdict is Verdict.REFUSE
    assert admission.limit is None
