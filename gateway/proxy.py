"""The model proxy: a session's Messages API calls, sent upstream with the operator's
credential, relayed byte for byte as they arrive, and charged to the session's budgets.

One call's path:

1. **Body.** Read up to ``CCQ_GATEWAY_MAX_BODY_BYTES`` (413 past it).
2. **Budgets.** :class:`~gateway.ledger.Ledger` admits the call, makes it wait while the
   scope's streaming calls could cross its cap, or refuses it. A refusal is a 402
   ``billing_error`` with ``x-should-retry: false``: the CLI shows its message and does
   not retry (Claude Code 2.1.329 retries a 400 six times whatever the header says, and
   words a 403 as an authentication failure), and the run ends ``budget_exceeded``.
3. **Upstream gate.** :class:`~gateway.upstream_gate.UpstreamGate` bounds the streams
   open upstream and holds calls while the upstream is rate limited. A 429/529 from
   upstream is never relayed: the call waits for the gate and is sent again, so the CLI
   sees one slow answer instead of running its own retries.
4. **Relay.** The upstream's response is streamed back as read (``aiter_raw``), while
   :class:`~gateway.usage.UsageMeter` reads the usage from it. When the body ends (or
   the session hangs up) the stream slot is freed and the call charged, in the
   background.

Whatever waits or is refused is told to the run as a gateway notice (an event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway.credentials import STATE_KEY, RunCredential
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.notices import Notices
from gateway.upstream_gate import RATE_LIMIT_STATUSES, GateFull, GateTimeout, Slot, UpstreamGate
from gateway.usage import UsageMeter
from gateway.wire import (
    UpstreamCredential,
    anthropic_error,
    downstream_headers,
    upstream_headers,
)
from orchestrator.domain.budgets import BUDGET_EXCEEDED, Admission, Verdict

log = logging.getLogger(__name__)

# How often a call held back by its budget asks again.
BUDGET_POLL_SECONDS = 0.2


class ModelProxy:
    """The handlers of ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""

    def __init__(
        self,
        *,
        client: httpx2.AsyncClient,
        credential: UpstreamCredential,
        gate: UpstreamGate,
        ledger: Ledger,
        notices: Notices,
        metrics: Metrics,
        max_body_bytes: int,
        wait_timeout: float,
    ) -> None:
        self.client = client
        self.credential = credential
        self.gate = gate
        self.ledger = ledger
        self.notices = notices
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.wait_timeout = wait_timeout
        self._background: set[asyncio.Task[None]] = set()

    async def messages(self, request: Request) -> Response:
        credential: RunCredential = getattr(request.state, STATE_KEY)
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            admitted = await self._admit(credential)
        except SQLAlchemyError:
            log.exception("cannot check budgets: the database is unavailable")
            return anthropic_error(529, "ccq's gateway cannot check budgets right now", retry=True)
        if isinstance(admitted, Response):
            return admitted
        return await self._forward(request, body, credential, admitted.call_id)

    async def count_tokens(self, request: Request) -> Response:
        """Free and unmetered upstream; relayed whole (a small JSON answer)."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            upstream = await self.client.post(
                request.url.path,
                params=request.url.query or None,
                content=body,
                headers=upstream_headers(request.headers.items(), self.credential),
            )
        except httpx2.HTTPError as exc:
            return self._unreachable(exc)
        return Response(
            upstream.content,
            upstream.status_code,
            headers=dict(downstream_headers(upstream.headers.items())),
        )

    # --- steps ---------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes | Response:
        """The request's body, or the answer when it is over the limit or cut short."""
        too_large = anthropic_error(413, f"request body over {self.max_body_bytes} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    return too_large
        except ClientDisconnect:
            return Response(status_code=400)
        return bytes(body)

    async def _admit(self, credential: RunCredential) -> Admission | Response:
        """The call's admission, or the answer that refuses it."""
        told = False
        with anyio.move_on_after(self.wait_timeout):
            while True:
                admission = await self.ledger.admit(credential)
                if admission.verdict is Verdict.ADMIT:
                    return admission
                if admission.verdict is Verdict.REFUSE:
                    return await self._refuse(credential, admission.limit)
                if not told and admission.limit is not None:
                    told = True
                    self.metrics.count("budget_waits_total")
                    await self.notices.push(
                        credential.run_id,
                        "waiting",
                        {"reason": "budget", "scope": admission.limit.scope},
                    )
                await anyio.sleep(BUDGET_POLL_SECONDS)
        self.metrics.count("timed_out_total")
        return anthropic_error(529, "ccq's gateway is busy: try again later", retry=True)

    async def _refuse(self, credential: RunCredential, limit: Any) -> Response:
        if limit is None:  # the session is gone
            return anthropic_error(401, "ccq session no longer exists")
        message = limit.message()
        self.metrics.count("refused_budget_total")
        await self.notices.push(
            credential.run_id,
            BUDGET_EXCEEDED,
            {
                "scope": limit.scope,
                "budget_usd": float(limit.budget),
                "spent_usd": float(limit.spent),
            },
        )
        return anthropic_error(402, message)

    async def _forward(
        self, request: Request, body: bytes, credential: RunCredential, call_id: int | None
    ) -> Response:
        stack = AsyncExitStack()
        try:
            slot = await stack.enter_async_context(
                self.gate.slot(on_wait=lambda reason, until: self._waiting(credential, reason))
            )
            upstream = await self._send(request, body, slot)
        except (GateFull, GateTimeout) as exc:
            await stack.aclose()
            await self.ledger.fail(call_id, None)
            self.metrics.count(
                "refused_full_total" if isinstance(exc, GateFull) else "timed_out_total"
            )
            return anthropic_error(529, "ccq's gateway is overloaded: try again later", retry=True)
        except httpx2.HTTPError as exc:
            await stack.aclose()
            await self.ledger.fail(call_id, None)
            return self._unreachable(exc)
        except BaseException:
            await stack.aclose()
            await self.ledger.fail(call_id, None)
            raise
        self.metrics.count("calls_total")
        return RelayResponse(Relay(self, upstream, call_id, credential, stack))

    async def _send(self, request: Request, body: bytes, slot: Slot) -> httpx2.Response:
        """Send until the upstream answers with something other than a rate limit."""
        headers = upstream_headers(request.headers.items(), self.credential)
        while True:
            outgoing = self.client.build_request(
                "POST",
                request.url.path,
                params=request.url.query or None,
                content=body,
                headers=headers,
            )
            upstream = await self.client.send(outgoing, stream=True)
            if upstream.status_code not in RATE_LIMIT_STATUSES:
                slot.upstream_ok()
                return upstream
            retry_after = upstream.headers.get("retry-after")
            await upstream.aclose()
            self.metrics.count("upstream_rate_limited_total")
            await slot.retry_after_limit(upstream.status_code, retry_after)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the request; a failure is logged, never lost silently."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished_background)

    def _finished_background(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway background work failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background work (charges) at shutdown."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _waiting(self, credential: RunCredential, reason: str) -> None:
        """The upstream gate's (synchronous) callback: tell the run, without waiting."""
        self.in_background(self.notices.push(credential.run_id, "waiting", {"reason": reason}))

    def _unreachable(self, exc: httpx2.HTTPError) -> Response:
        self.metrics.count("upstream_errors_total")
        log.warning("upstream unreachable: %s", type(exc).__name__)
        return anthropic_error(502, "ccq's gateway cannot reach the model API", retry=True)


class Relay:
    """One upstream answer on its way to the session: relayed as read, metered, and then
    settled exactly once (upstream closed, stream slot freed, call charged), however the
    relay ends: the body done, the session gone, or the response never started."""

    def __init__(
        self,
        proxy: ModelProxy,
        upstream: httpx2.Response,
        call_id: int | None,
        credential: RunCredential,
        stack: AsyncExitStack,
    ) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self.call_id = call_id
        self.credential = credential
        self.stack = stack
        self.meter = UsageMeter(upstream.headers.get("content-type"))
        self._settled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.upstream.aiter_raw():
                self.meter.feed(chunk)
                yield chunk
        finally:
            await self.settle()

    async def settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        with anyio.CancelScope(shield=True):
            await self.upstream.aclose()
            await self.stack.aclose()
        self.meter.finish()
        # Off the response's path: the session has its last byte before the ledger's
        # transaction runs (the call counts as in flight until then).
        self.proxy.in_background(self._charge())

    async def _charge(self) -> None:
        proxy = self.proxy
        charge = await proxy.ledger.charge(
            self.credential, self.call_id, self.meter, self.upstream.status_code
        )
        proxy.metrics.count("cost_usd_total", float(charge.cost_usd))
        if not charge.priced:
            proxy.metrics.count("unpriced_calls_total")
            log.warning("model %r is not in the price table", self.meter.model)
            await proxy.notices.push(
                self.credential.run_id,
                "unpriced_model",
                {"model": self.meter.model, "charged_usd": float(charge.cost_usd)},
            )


class RelayResponse(StreamingResponse):
    """A streamed upstream answer whose relay is settled even if it never starts."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(
            relay.chunks(),
            status_code=relay.upstream.status_code,
            headers=dict(downstream_headers(relay.upstream.headers.items())),
        )
        self.relay = relay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.settle()
