"""The API's contract as an OpenAPI 3.1 document, served at ``GET /api/v1/openapi.json``.

Schemas come from the pydantic models that validate requests (:mod:`api.schemas`) and
describe answers (:mod:`api.responses`), through pydantic's own JSON Schema output; this
module only lists the operations: path, parameters, body and every status each can
answer. ``tests/unit/test_openapi.py`` fails when the app has a route this table lacks,
and ``make test`` fuzzes the document against the real API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Blueprint, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import responses as out
from api.extensions import get_services
from api.schemas import (
    BatchOptions,
    ChildrenQuery,
    CreateBatch,
    CreateChild,
    CreateFanout,
    CreateRun,
    CreateSession,
    ListBatchesQuery,
    ListSessionsQuery,
)
from api.sessions import MAX_EVENTS_PAGE

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

TITLE = "ccq"
VERSION = "1"

# What each error status means here (every error has the one shape, `Error`).
ERRORS = {
    400: "Invalid input: `details` names each field and the reason",
    401: "Missing, invalid or expired bearer token",
    403: "The token may not do this (a session token on an owner-wide endpoint)",
    404: "No such resource for this caller",
    409: "A structural limit or the resource's state refuses it (retrying will not help)",
    413: "A body or field over a limit: `details` names the limit and its setting",
    429: "A rate or cap of the owner's: retry after `Retry-After` seconds",
    503: "A backing service is unavailable or busy: retry after `Retry-After` seconds",
}
# Answered by the HTTP server (gunicorn) before a request reaches the API, so as plain
# HTML: a request line longer than its limit (4094 bytes: the path and query string).
URI_TOO_LONG = {
    "description": "Request line over the server's limit (answered by gunicorn, in HTML)",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}
READ = (400, 401, 404, 503)
WRITE = (400, 401, 404, 409, 413, 503)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: {session_id}
    summary: str
    ok: dict[int, type[BaseModel] | str]  # status -> model, or a media type of text
    errors: tuple[int, ...] = READ
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    extra_params: tuple[dict[str, Any], ...] = ()
    owner_only: bool = False
    auth: bool = True
    websocket: bool = False
    ndjson_body: bool = False
    tags: tuple[str, ...] = field(default=())


def _uuid_param(name: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "uuid"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _history_params() -> tuple[dict[str, Any], ...]:
    return (
        {
            "name": "after",
            "in": "query",
            "description": "An event ID (`<ms>-<seq>`): the page starts after it",
            "schema": {"type": "string", "pattern": r"^\d+-\d+$"},
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS_PAGE},
        },
    )


def _tail_params() -> tuple[dict[str, Any], ...]:
    return (
        {"name": "after", "in": "query", "schema": {"type": "string"}},
        {
            "name": "access_token",
            "in": "query",
            "description": "The bearer token, for clients that cannot set a header",
            "schema": {"type": "string"},
        },
    )


TAIL_DESCRIPTION = (
    "A WebSocket (upgrade with `Connection: Upgrade`, `Upgrade: websocket`). Frames are "
    "JSON events; client frames are read and dropped. Close codes: 1000 the stream "
    "ended, 1009 a client frame over CCQ_WS_MAX_MESSAGE_BYTES, 4401 the token is "
    "invalid, expired or revoked, 4404 no such stream for this caller. Over "
    "CCQ_MAX_TAILS_PER_OWNER open tails the upgrade is refused with 429."
)


def operations(max_wait_seconds: float) -> list[Operation]:
    """Every route of the API (healthz/readyz included; Flask's static route is not)."""
    session_id, run_id = _uuid_param("session_id"), _uuid_param("run_id")
    batch_id, fanout_id = _uuid_param("batch_id"), _uuid_param("fanout_id")
    wait = {
        "name": "wait",
        "in": "query",
        "description": "Seconds to wait for the run to finish (200) before answering 202",
        "schema": {"type": "number", "minimum": 0, "maximum": max_wait_seconds},
    }
    return [
        Operation("get", "/healthz", "Liveness", {200: out.Health}, (), auth=False),
        Operation("get", "/readyz", "Readiness", {200: out.Health}, (503,), auth=False),
        Operation(
            "get",
            "/api/v1/openapi.json",
            "This document",
            {200: "application/json"},
            (),
            auth=False,
        ),
        Operation(
            "post",
            "/api/v1/sessions",
            "Create a session (and queue its first prompt)",
            {201: out.SessionCreated, 200: out.SessionCreated},
            (*WRITE, 403, 429),
            body=CreateSession,
            owner_only=True,
        ),
        Operation(
            "get",
            "/api/v1/sessions",
            "List the caller's sessions",
            {200: out.SessionPage},
            (*READ, 403),
            query=ListSessionsQuery,
            owner_only=True,
        ),
        Operation(
            "get",
            "/api/v1/sessions/{session_id}",
            "A session",
            {200: out.SessionEnvelope},
            (*READ, 403),
            extra_params=(session_id,),
        ),
        Operation(
            "delete",
            "/api/v1/sessions/{session_id}",
            "Delete a session and its tree",
            {202: out.SessionDeleted},
            (*READ, 403, 409),
            extra_params=(session_id,),
        ),
        Operation(
            "post",
            "/api/v1/sessions/{session_id}/runs",
            "Queue a prompt",
            {202: out.RunEnvelope, 200: out.RunEnvelope},
            (*WRITE, 403, 429),
            body=CreateRun,
            extra_params=(session_id, wait),
        ),
        Operation(
            "post",
            "/api/v1/sessions/{session_id}/stop",
            "Stop a session and its tree",
            {202: out.SessionStopped},
            (*READ, 403, 409),
            extra_params=(session_id,),
        ),
        Operation(
            "get",
            "/api/v1/sessions/{session_id}/events",
            "A session's event history",
            {200: out.EventPage},
            (*READ, 403),
            extra_params=(session_id, *_history_params()),
        ),
        Operation(
            "post",
            "/api/v1/sessions/{session_id}/children",
            "Spawn a child session",
            {201: out.ChildCreated, 200: out.ChildCreated},
            (*WRITE, 403, 429),
            body=CreateChild,
            extra_params=(session_id,),
        ),
        Operation(
            "get",
            "/api/v1/sessions/{session_id}/children",
            "A session's children",
            {200: out.ChildTree},
            (*READ, 403),
            query=ChildrenQuery,
            extra_params=(session_id,),
        ),
        Operation(
            "post",
            "/api/v1/sessions/{session_id}/fanout",
            "Fan prompts out to children; the parent resumes when all end",
            {202: out.FanoutStarted, 200: out.FanoutStarted},
            (*WRITE, 403, 429),
            body=CreateFanout,
            extra_params=(session_id,),
        ),
        Operation(
            "get",
            "/api/v1/sessions/{session_id}/stream",
            "Tail a session (WebSocket)",
            {101: "websocket"},
            (401, 404, 429, 503),
            extra_params=(session_id, *_tail_params()),
            websocket=True,
        ),
        Operation(
            "get",
            "/api/v1/fanouts/{fanout_id}",
            "A fan-out",
            {200: out.FanoutEnvelope},
            (*READ, 403),
            extra_params=(fanout_id,),
        ),
        Operation(
            "get",
            "/api/v1/runs/{run_id}",
            "A run",
            {200: out.RunEnvelope},
            (*READ, 403),
            extra_params=(run_id,),
        ),
        Operation(
            "post",
            "/api/v1/runs/{run_id}/cancel",
            "Cancel a run",
            {202: out.RunEnvelope},
            (*READ, 403, 409),
            extra_params=(run_id,),
        ),
        Operation(
            "get",
            "/api/v1/runs/{run_id}/events",
            "A run's event history",
            {200: out.EventPage},
            (*READ, 403),
            extra_params=(run_id, *_history_params()),
        ),
        Operation(
            "get",
            "/api/v1/runs/{run_id}/stream",
            "Tail a run (WebSocket)",
            {101: "websocket"},
            (401, 404, 429, 503),
            extra_params=(run_id, *_tail_params()),
            websocket=True,
        ),
        Operation(
            "post",
            "/api/v1/batches",
            "Submit a batch (JSON, or NDJSON items)",
            {201: out.BatchEnvelope, 200: out.BatchEnvelope},
            (*WRITE, 403, 429),
            body=CreateBatch,
            query=BatchOptions,
            owner_only=True,
            ndjson_body=True,
        ),
        Operation(
            "get",
            "/api/v1/batches",
            "List the caller's batches",
            {200: out.BatchPage},
            (*READ, 403),
            query=ListBatchesQuery,
            owner_only=True,
        ),
        Operation(
            "get",
            "/api/v1/batches/{batch_id}",
            "A batch",
            {200: out.BatchEnvelope},
            (*READ, 403),
            extra_params=(batch_id,),
            owner_only=True,
        ),
        Operation(
            "post",
            "/api/v1/batches/{batch_id}/cancel",
            "Cancel a batch",
            {202: out.BatchEnvelope},
            (*READ, 403, 409),
            extra_params=(batch_id,),
            owner_only=True,
        ),
        Operation(
            "get",
            "/api/v1/batches/{batch_id}/results",
            "A batch's results (NDJSON)",
            {200: "application/x-ndjson"},
            (*READ, 403),
            extra_params=(batch_id,),
            owner_only=True,
        ),
        Operation(
            "get",
            "/api/v1/batches/{batch_id}/stream",
            "Tail a batch (WebSocket)",
            {101: "websocket"},
            (401, 403, 404, 429, 503),
            extra_params=(batch_id, *_tail_params()),
            websocket=True,
            owner_only=True,
        ),
    ]


def _query_params(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """A query model's fields as parameters (their schemas inlined, as OpenAPI wants)."""
    params = []
    for name, info in model.model_fields.items():
        schema = schemas[model.__name__]["properties"][name]
        params.append(
            {"name": name, "in": "query", "required": info.is_required(), "schema": schema}
        )
    return params


def _responses(op: Operation) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, kind in op.ok.items():
        if kind == "websocket":
            answers[str(status)] = {"description": "Switching Protocols: the stream"}
        elif isinstance(kind, str):
            answers[str(status)] = {"description": "OK", "content": {kind: {"schema": {}}}}
        else:
            ref = {"$ref": f"#/components/schemas/{kind.__name__}"}
            answers[str(status)] = {
                "description": kind.__doc__.strip().splitlines()[0] if kind.__doc__ else "OK",
                "content": {"application/json": {"schema": ref}},
            }
    for status in sorted(set(op.errors)):
        answer: dict[str, Any] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in (429, 503):
            answer["headers"] = RETRY_AFTER
        answers[str(status)] = answer
    answers["414"] = URI_TOO_LONG
    return answers


def build_document(max_wait_seconds: float) -> dict[str, Any]:
    ops = operations(max_wait_seconds)
    models: set[tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
        (out.Error, "serialization")
    }
    for op in ops:
        for model in (op.body, op.query):
            if model is not None:
                models.add((model, "validation"))
        models.update((k, "serialization") for k in op.ok.values() if not isinstance(k, str))
    ordered = sorted(models, key=lambda pair: pair[0].__name__)
    _, top = models_json_schema(ordered, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        params = list(op.extra_params)
        if op.query is not None:
            params += _query_params(op.query, schemas)
        entry: dict[str, Any] = {
            "operationId": f"{op.method}_{op.path}".replace("/", "_")
            .replace("{", "")
            .replace("}", "")
            .replace(".", "_"),
            "summary": op.summary,
            "parameters": params,
            "responses": _responses(op),
            "security": [{"bearer": []}] if op.auth else [],
        }
        if op.websocket:
            entry["description"] = TAIL_DESCRIPTION
            entry["x-websocket"] = True
        if op.owner_only:
            entry["description"] = (
                entry.get("description", "") + " Owner tokens only (403 for session tokens)."
            ).strip()
        if op.body is not None:
            content: dict[str, Any] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
            }
            if op.ndjson_body:
                content["application/x-ndjson"] = {"schema": {"type": "string"}}
            entry["requestBody"] = {"required": True, "content": content}
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Runs Claude Code sessions at scale. Every error is "
            '`{"error": {"code", "message", "details"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@bp.get("/openapi.json")
def openapi_document() -> tuple[dict[str, Any], int]:
    document = current_app.extensions.get("ccq.openapi")
    if document is None:
        document = build_document(get_services().settings.max_wait_seconds)
        current_app.extensions["ccq.openapi"] = document
    return document, 200
