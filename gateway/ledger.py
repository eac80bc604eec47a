"""The gateway's side of budgets: :mod:`orchestrator.domain.budgets`, off the event loop.

Each call is one short transaction in a worker thread: admit before a model call goes
upstream, charge (or fail) once its answer has streamed.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from gateway.credentials import RunCredential
from gateway.usage import UsageMeter
from orchestrator.db.engine import session_scope
from orchestrator.domain.budgets import Admission, Budgets, Caller
from orchestrator.domain.pricing import Charge, PriceTable


class Ledger:
    def __init__(
        self, session_factory: sessionmaker[DbSession], budgets: Budgets, prices: PriceTable
    ) -> None:
        self._factory = session_factory
        self._budgets = budgets
        self.prices = prices

    async def admit(self, credential: RunCredential) -> Admission:
        return await anyio.to_thread.run_sync(self._admit, _caller(credential))

    def _admit(self, caller: Caller) -> Admission:
        with session_scope(self._factory) as db:
            return self._budgets.admit(db, caller)

    async def charge(
        self,
        credential: RunCredential,
        call_id: int | None,
        meter: UsageMeter,
        upstream_status: int,
    ) -> Charge:
        """Charge what the meter read; shielded, so a client that leaves mid-stream is
        still charged for what the upstream produced."""
        charge = self.prices.charge(meter.model, meter.usage)
        caller = _caller(credential)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                self._charge, caller, call_id, meter, charge, upstream_status
            )
        return charge

    def _charge(
        self, caller: Caller, call_id: int | None, meter: UsageMeter, charge: Charge, status: int
    ) -> None:
        with session_scope(self._factory) as db:
            self._budgets.charge(
                db,
                call_id,
                caller=caller,
                model=meter.model,
                usage=meter.usage,
                charge=charge,
                upstream_status=status,
            )

    async def fail(self, call_id: int | None, upstream_status: int | None) -> None:
        """A call that produced nothing to charge (an untracked one left no trace)."""
        if call_id is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._fail, call_id, upstream_status)

    def _fail(self, call_id: int, upstream_status: int | None) -> None:
        with session_scope(self._factory) as db:
            self._budgets.fail(db, call_id, upstream_status)


def _caller(credential: RunCredential) -> Caller:
    return Caller(credential.run_id, credential.session_id, credential.owner)
