"""The session gateway on the real stack: the real CLI in session containers, its model
calls through `ccq gateway` to the scripted model server, its tools over HTTP.

What a session may see (no operator credential), what the upstream gets (the operator's
credential), streaming, metering and live budgets across a tree, fleet-wide rate limits,
and the gateway's answers to bad input.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from model_server.recording import fingerprint
from model_server.server import ModelServer
from orchestrator.auth import session_tokens
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import session_scope
from orchestrator.db.models import ModelCall, ModelCallStatus, OwnerSpend, Run, Session
from orchestrator.domain.pricing import PriceTable, Usage
from orchestrator.settings import Settings
from tests.http_api import SessionApi, bash, ccq_tool
from tests.processes import (
    OPERATOR_KEY,
    ApiProcess,
    GatewayProcess,
    WorkerProcess,
    gateway_environment,
    running,
)
from tests.session_tokens import mint_live_token
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration


def owner_api(api_server: ApiProcess, settings: Settings, owner: str | None = None) -> SessionApi:
    """A fresh owner (no spend today) unless one is named."""
    return SessionApi(api_server, mint_token(settings, owner or f"gw-{uuid.uuid4().hex[:10]}"))


@pytest.fixture
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> SessionApi:
    return owner_api(api_server, settings)


def calls_of(db_factory: Any, **where: Any) -> list[ModelCall]:
    with session_scope(db_factory) as s:
        query = select(ModelCall).order_by(ModelCall.id)
        for name, value in where.items():
            query = query.where(getattr(ModelCall, name) == value)
        return list(s.scalars(query))


def events_of(api: SessionApi, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = api.get(f"/runs/{run_id}/events?limit=5000")["events"]
    return events


# --- the credential ----------------------------------------------------------------------


def test_a_session_sees_no_operator_credential_and_the_upstream_gets_it(
    alice: SessionApi, model: ModelServer
) -> None:
    dump = (
        "{ env; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; echo; done; }"
        " 2>/dev/null | sort -u"
    )
    session_id, run_id = alice.session(bash(dump))
    run = alice.wait_run(run_id)
    assert run["status"] == "succeeded", run
    seen = run["result"]
    # The dump ran (the CLI's own environment is in it), and holds only the run's token
    # (which leaves the worker redacted).
    assert "ANTHROPIC_BASE_URL=http://host.docker.internal:" in seen
    assert "ANTHROPIC_API_KEY=[REDACTED:CCQ_SESSION_TOKEN]" in seen
    assert OPERATOR_KEY not in seen
    assert OPERATOR_KEY not in json.dumps(events_of(alice, run_id))

    upstream = [e for e in model.requests() if e["path"] == "/v1/messages"]
    mine = [e for e in upstream if e["session_id"] == session_id]
    assert len(mine) >= 2  # the tool call, then the answer to its result
    assert {e["headers"].get("x-api-key") for e in mine} == {fingerprint(OPERATOR_KEY)}
    assert all("authorization" not in e["headers"] for e in mine)


@dataclass(frozen=True)
class RunToken:
    token: str
    owner: str
    session_id: uuid.UUID
    run_id: uuid.UUID


def mint_run_token(
    db_factory: Any, api: SessionApi, *, ttl: timedelta = timedelta(minutes=10)
) -> RunToken:
    """A session token of a new session of ``api``'s owner, as a running run of it holds
    one: what a session holds, for calling the gateway directly. The session's first run
    has gone through the stack (and spent)."""
    session_id, first_run = api.session("hello")
    api.wait_run(first_run)
    token, run_id = mint_live_token(db_factory, session_id, ttl=ttl)
    with session_scope(db_factory) as s:
        owner = s.get(Session, uuid.UUID(session_id)).owner  # type: ignore[union-attr]
    return RunToken(token, owner, uuid.UUID(session_id), run_id)


def messages_body(prompt: str = "hi", *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    }


def call_gateway(
    url: str, token: str | None, body: Any = None, *, path: str = "/v1/messages", **kw: Any
) -> requests.Response:
    headers = {"anthropic-version": "2023-06-01", **kw.pop("headers", {})}
    if token is not None:
        headers["x-api-key"] = token
    return requests.post(
        url + path,
        json=body if body is not None else messages_body(),
        headers=headers,
        timeout=60,
        **kw,
    )


@pytest.fixture
def oauth_gateway(
    settings: Settings, model_server: ModelServer, api_port: int, tmp_path: Any
) -> Iterator[GatewayProcess]:
    """A second gateway of the same stack, holding an OAuth token instead of an API key."""
    credential = {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat-ccq-test-oauth"}
    env = gateway_environment(settings, model_server, api_port, free_port(), credential)
    env["CCQ_GATEWAY_PROXY_PORT"] = str(free_port())  # beside the stack's own gateway
    with running(GatewayProcess(env, tmp_path / "gateway-oauth.log")) as process:
        yield process


def test_an_oauth_credential_goes_upstream_as_a_bearer_with_its_beta(
    alice: SessionApi, db_factory: Any, model: ModelServer, oauth_gateway: GatewayProcess
) -> None:
    run = mint_run_token(db_factory, alice)
    model.clear()
    answer = call_gateway(oauth_gateway.url, run.token)
    assert answer.status_code == 200, answer.text
    assert "event: message_stop" in answer.text
    (entry,) = [e for e in model.requests() if e["path"] == "/v1/messages"]
    assert entry["headers"]["authorization"] == fingerprint("Bearer sk-ant-oat-ccq-test-oauth")
    assert "x-api-key" not in entry["headers"]
    assert "oauth-2025-04-20" in entry["headers"]["anthropic-beta"]


# --- streaming and metering ---------------------------------------------------------------


def _stream_ms(event: dict[str, Any]) -> int:
    return int(event["id"].split("-")[0])


def test_chunks_reach_the_run_as_they_are_produced(alice: SessionApi) -> None:
    _, run_id = alice.session("[[stream 50 0.05]]")
    run = alice.wait_run(run_id)
    assert run["status"] == "succeeded", run
    deltas = [
        e
        for e in events_of(alice, run_id)
        if e["type"] == "stream_event" and e["data"]["event"].get("type") == "content_block_delta"
    ]
    assert len(deltas) >= 45
    times = sorted(_stream_ms(e) for e in deltas)
    # 50 chunks 50 ms apart: spread over ~2.5 s as they were produced, not one burst at
    # the end (a buffering proxy would publish them all within a few ms).
    assert times[-1] - times[0] >= 1500
    densest = max(sum(1 for t in times if start <= t < start + 250) for start in times)
    assert densest <= 15


def test_each_call_is_metered_per_run_session_and_owner(
    alice: SessionApi, db_factory: Any, settings: Settings
) -> None:
    session_id, run_id = alice.session(bash("echo metered"))
    run = alice.wait_run(run_id)
    assert run["status"] == "succeeded", run

    # Charged in the background, as soon as each call's last byte was relayed.
    def both_charged() -> list[ModelCall] | None:
        found = calls_of(db_factory, run_id=uuid.UUID(run_id))
        return found if len(found) >= 2 else None

    calls = wait_for(both_charged, timeout=10, what="the run's calls to be charged")
    assert len(calls) >= 2
    assert {c.status for c in calls} == {ModelCallStatus.DONE}
    prices = PriceTable(settings.model_prices)
    for call in calls:
        assert call.input_tokens > 0
        assert call.output_tokens > 0
        assert call.priced
        usage = Usage(
            call.input_tokens,
            call.output_tokens,
            call.cache_creation_input_tokens,
            call.cache_read_input_tokens,
        )
        assert call.cost_usd == pytest.approx(prices.charge(call.model, usage).cost_usd)
    total = sum((c.cost_usd for c in calls), Decimal(0))
    run = alice.get(f"/runs/{run_id}")["run"]
    assert Decimal(str(run["metered_cost_usd"])) == pytest.approx(total)
    session = alice.get(f"/sessions/{session_id}")["session"]
    assert Decimal(str(session["tree_spent_usd"])) == pytest.approx(total)
    with session_scope(db_factory) as s:
        spent = s.scalars(select(OwnerSpend.spent_usd).where(OwnerSpend.owner == calls[0].owner))
        assert sum(spent, Decimal(0)) == pytest.approx(total)


def test_a_model_missing_from_the_price_table_is_charged_high_and_flagged(
    api_server: ApiProcess,
    settings: Settings,
    worker: WorkerProcess,
    db_factory: Any,
    gateway: GatewayProcess,
) -> None:
    api = owner_api(api_server, settings)
    reply = api.post("/sessions", {"prompt": "hi", "model": "mystery-model-1"}, 201)
    run_id = reply["run"]["id"]
    api.wait_run(run_id)
    calls = calls_of(db_factory, run_id=uuid.UUID(run_id))
    assert calls
    assert not any(c.priced for c in calls)
    assert all(c.cost_usd > 0 for c in calls)  # never silently free
    types = [e["type"] for e in events_of(api, run_id)]
    assert "ccq.gateway.unpriced_model" in types
    assert gateway.metrics()["unpriced_calls_total"] >= 1


# --- budgets -----------------------------------------------------------------------------


def test_a_tree_budget_stops_the_tree_within_one_call_and_marks_its_runs(
    alice: SessionApi, db_factory: Any
) -> None:
    # What one call costs on this stack (the CLI's system prompt dominates its input).
    _, calibration = alice.session("hi")
    alice.wait_run(calibration)
    one_call = max(c.cost_usd for c in calls_of(db_factory, run_id=uuid.UUID(calibration)))
    budget = float(one_call * Decimal("3.5"))

    # The root delegates to three children whose two calls each would exceed it.
    children = [bash(f"echo child-{i}") for i in range(3)]
    reply = alice.post(
        "/sessions",
        {"prompt": ccq_tool("delegate", {"prompts": children}), "max_budget_usd": budget},
        201,
    )
    root_id, first_run = reply["session"]["id"], reply["run"]["id"]
    delegated = alice.wait_run(first_run)
    assert delegated["status"] == "succeeded", delegated
    fanout_id = alice.get(f"/sessions/{root_id}/children")["children"][0]["fanout_id"]
    followup = alice.wait_run(alice.wait_fanout(fanout_id)["followup_run_id"])

    # The parent was resumed, and its resumed run was refused at once.
    assert followup["status"] == "failed", followup
    assert followup["error_code"] == "budget_exceeded"
    assert "budget exceeded" in followup["error"]
    # The children: each either finished before the cap or is marked.
    child_runs = [
        alice.get(f"/runs/{c['last_run']['id']}")["run"]
        for c in alice.get(f"/fanouts/{fanout_id}")["children"]
    ]
    assert any(r["error_code"] == "budget_exceeded" for r in child_runs), child_runs
    for r in child_runs:
        assert r["status"] == "succeeded" or r["error_code"] == "budget_exceeded", r

    # The spend: at the cap, past it by at most one call.
    root = alice.get(f"/sessions/{root_id}")["session"]
    with session_scope(db_factory) as s:
        tree_calls = list(
            s.scalars(select(ModelCall).where(ModelCall.lineage.contains([uuid.UUID(root_id)])))
        )
    charged = [c for c in tree_calls if c.status == ModelCallStatus.DONE]
    refused = [c for c in tree_calls if c.status == ModelCallStatus.REFUSED]
    spent = Decimal(str(root["tree_spent_usd"]))
    assert spent == pytest.approx(sum((c.cost_usd for c in charged), Decimal(0)))
    assert spent >= Decimal(str(budget))
    assert spent <= Decimal(str(budget)) + max(c.cost_usd for c in charged)
    # The CLI showed each refusal and did not retry it: one refusal per refused run.
    refused_runs = [c.run_id for c in refused]
    assert len(refused_runs) == len(set(refused_runs))
    events = events_of(alice, followup["id"])
    assert "ccq.gateway.budget_exceeded" in [e["type"] for e in events]
    finished = next(e for e in events if e["type"] == "ccq.run.finished")
    assert finished["data"]["error_code"] == "budget_exceeded"


@pytest.fixture
def capped_gateway(
    settings: Settings, model_server: ModelServer, api_port: int, tmp_path: Any
) -> Iterator[GatewayProcess]:
    """A second gateway of the stack whose owners may spend almost nothing a day."""
    env = gateway_environment(settings, model_server, api_port, free_port())
    env["CCQ_GATEWAY_PROXY_PORT"] = str(free_port())  # beside the stack's own gateway
    env["CCQ_OWNER_DAILY_BUDGET_USD"] = "0.000001"
    with running(GatewayProcess(env, tmp_path / "gateway-capped.log")) as process:
        yield process


def test_an_owner_over_the_daily_cap_is_refused_in_the_anthropic_shape(
    alice: SessionApi, db_factory: Any, model: ModelServer, capped_gateway: GatewayProcess
) -> None:
    run = mint_run_token(db_factory, alice)  # its run spent more than the cap, through the stack
    model.clear()
    answer = call_gateway(capped_gateway.url, run.token)
    assert answer.status_code == 402
    assert answer.headers["x-should-retry"] == "false"
    error = answer.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "billing_error"
    assert "this owner today" in error["error"]["message"]
    assert model.requests() == []  # never forwarded
    refused = [
        c for c in calls_of(db_factory, run_id=run.run_id) if c.status == ModelCallStatus.REFUSED
    ]
    assert len(refused) == 1


# --- rate limits -------------------------------------------------------------------------


def test_an_upstream_rate_limit_is_waited_out_once_for_the_whole_fleet(
    api_server: ApiProcess,
    settings: Settings,
    worker: WorkerProcess,
    second_worker: WorkerProcess,
    model: ModelServer,
    gateway: GatewayProcess,
) -> None:
    api = owner_api(api_server, settings)
    pauses_before = gateway.metrics().get("rate_limit_pauses_total", 0)
    model.rate_limit(seconds=5, retry_after=2)
    runs = [api.session(f"run {i}")[1] for i in range(8)]
    finished = [api.wait_run(run_id) for run_id in runs]
    assert [r["status"] for r in finished] == ["succeeded"] * 8, finished

    limited = sorted(
        e["timestamp"] for e in model.requests() if e.get("directive") == "rate_limited"
    )
    assert limited, "the upstream never answered 429: the window missed the runs"
    # After the first 429 the gateway pauses: from then on the upstream sees one probe per
    # retry-after period, never the fleet (calls in flight at the first 429 may also
    # have met it).
    probes = [t for t in limited if t > limited[0] + 0.5]
    assert len(probes) <= 3
    assert all(b - a >= 1.5 for a, b in zip([limited[0], *probes], probes, strict=False))
    for run_id in runs:
        events = events_of(api, run_id)
        retries = [
            e for e in events if e["type"] == "system" and e["data"].get("subtype") == "api_retry"
        ]
        assert retries == [], f"run {run_id}: the CLI retried on its own"
    waits = [
        e["data"]
        for run_id in runs
        for e in events_of(api, run_id)
        if e["type"] == "ccq.gateway.waiting"
    ]
    assert {"reason": "rate_limited"} in waits
    assert gateway.metrics()["rate_limit_pauses_total"] > pauses_before


# --- bad input ---------------------------------------------------------------------------


def test_missing_invalid_expired_and_revoked_tokens_are_401_and_never_forwarded(
    alice: SessionApi,
    db_factory: Any,
    model: ModelServer,
    gateway: GatewayProcess,
    settings: Settings,
) -> None:
    live = mint_run_token(db_factory, alice)
    expired = mint_run_token(db_factory, alice, ttl=timedelta(seconds=-1))
    revoked = mint_run_token(db_factory, alice)
    with session_scope(db_factory) as s:
        session_tokens.revoke_run(s, revoked.run_id)
    finished = mint_run_token(db_factory, alice)  # a token whose run has ended, not yet revoked
    with session_scope(db_factory) as s:
        s.execute(update(Run).where(Run.id == finished.run_id).values(status="succeeded"))
    jwt = mint_token(settings, "alice")  # an owner's token is not a session's
    model.clear()
    tokens = [None, "", "nonsense", "ccqs_" + "x" * 43, expired.token, revoked.token, jwt]
    for token in [*tokens, finished.token]:
        for path in ("/v1/messages", "/v1/messages/count_tokens", "/mcp"):
            answer = call_gateway(gateway.url, token, path=path)
            assert answer.status_code == 401, (token, path, answer.text)
            assert answer.json()["error"]["type"] == "authentication_error"
            assert answer.headers["x-should-retry"] == "false"
    assert model.requests() == []
    assert call_gateway(gateway.url, live.token).status_code == 200


def test_a_body_over_the_limit_is_413_and_never_forwarded(
    alice: SessionApi,
    db_factory: Any,
    model: ModelServer,
    gateway: GatewayProcess,
    settings: Settings,
) -> None:
    run = mint_run_token(db_factory, alice)
    model.clear()
    huge = b'{"messages": "' + b"x" * (settings.gateway_max_body_bytes + 1) + b'"}'
    answer = requests.post(
        gateway.url + "/v1/messages",
        data=huge,
        headers={"x-api-key": run.token, "content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "request_too_large"
    assert model.requests() == []


def test_paths_beyond_the_two_endpoints_are_not_served(
    alice: SessionApi, db_factory: Any, gateway: GatewayProcess, model: ModelServer
) -> None:
    run = mint_run_token(db_factory, alice)
    model.clear()
    for method, path in [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/models"),
        ("POST", "/v1/files"),
        ("GET", "/v1/messages"),
        ("GET", "/metrics/../v1/messages"),
    ]:
        answer = requests.request(
            method, gateway.url + path, headers={"x-api-key": run.token}, timeout=30
        )
        assert answer.status_code in (404, 405), (method, path, answer.status_code)
    assert model.requests() == []


def _fuzz_bodies(rng: random.Random) -> Iterator[tuple[bytes, dict[str, str]]]:
    values: list[Any] = [
        None,
        0,
        -1,
        10**30,
        1.5e308,
        "",
        "\u0000",
        "\ud7ff" * 10,
        [],
        {},
        [[[[[]]]]],
        {"messages": None},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "tool", "content": [{"type": "x"}]}], "stream": "yes"},
        {"model": 5, "max_tokens": "many", "messages": [{"role": "user", "content": "hi"}]},
        {"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {"name": "nope"}},
        {"jsonrpc": "2.0", "method": "initialize", "id": "x", "params": None},
        {"jsonrpc": "2.0", "method": "tools/list"},
    ]
    types = ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "a/b;c"]
    for _ in range(150):
        pick = rng.random()
        if pick < 0.4:
            body = json.dumps(rng.choice(values)).encode()
        elif pick < 0.7:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        else:
            text = json.dumps(rng.choice(values))
            body = text[: rng.randrange(0, len(text) + 1)].encode()
        headers = {"content-type": rng.choice(types)}
        if rng.random() < 0.3:
            headers["accept"] = rng.choice(["text/event-stream", "*/*", "application/json", "x"])
        if rng.random() < 0.2:
            headers["mcp-protocol-version"] = rng.choice(["2025-06-18", "bogus", "2026-07-28"])
        yield body, headers


def test_fuzzing_both_endpoints_never_makes_the_gateway_fail(
    alice: SessionApi, db_factory: Any, gateway: GatewayProcess
) -> None:
    run = mint_run_token(db_factory, alice)
    rng = random.Random(1414)  # noqa: S311 - reproducible cases, not secrets
    statuses: dict[int, int] = {}
    for path in ("/v1/messages", "/mcp"):
        for token in (run.token, "ccqs_bogus"):
            for body, headers in _fuzz_bodies(rng):
                answer = requests.post(
                    gateway.url + path,
                    data=body,
                    headers={**headers, "x-api-key": token},
                    timeout=60,
                )
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                assert answer.status_code < 500, (path, body[:200], answer.text[:500])
    assert len(statuses) >= 2  # the cases reached past the door, not only 401s
    assert requests.get(gateway.url + "/healthz", timeout=5).status_code == 200
    log = gateway.log_path.read_text()
    assert "Traceback" not in log


def test_metrics_are_served_on_loopback(gateway: GatewayProcess) -> None:
    metrics = wait_for(gateway.metrics, timeout=10, what="gateway metrics")
    assert "streams_open" in metrics
    assert "waiting" in metrics
