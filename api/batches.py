"""Batches: submit up to 10,000 prompts at once, follow their progress, export results."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request, stream_with_context
from pydantic import ValidationError

from api.auth import require_owner
from api.errors import InvalidInput, TooLarge, validation_details
from api.extensions import Services, get_services, request_unit
from api.schemas import (
    MAX_PROMPT_BYTES,
    BatchItemBody,
    BatchOptions,
    CliOptionsBody,
    CreateBatch,
    ListBatchesQuery,
    decode_cursor,
    encode_cursor,
)
from api.sessions import Reply
from api.validation import parse_body, unstorable_fields
from orchestrator.db.models import Batch
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import batches
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.batches import MAX_ITEMS, BatchItem, BatchService, NewBatch, batch_view
from orchestrator.domain.cancellation import signal_cancel
from orchestrator.domain.isolation import IsolationError, IsolationPolicy
from orchestrator.errors import QueueUnavailable
from orchestrator.streams.batch_events import BATCH_PROGRESS, publish_batch

log = logging.getLogger(__name__)

bp = Blueprint("batches", __name__, url_prefix="/api/v1")

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson")
# A rejected batch lists at most this many item errors (and says how many there were).
MAX_REPORTED_ERRORS = 100


@bp.post("/batches")
@require_owner
def create_batch(owner: str) -> Reply:
    """A batch from a JSON body (``items``, ``defaults``) or an NDJSON upload (one item per
    line, batch options in the query string). Nothing is created unless every item is
    valid; invalid items are reported by index."""
    spec = _batch_from_request()
    services = get_services()
    uow = request_unit()
    batch, created = BatchService(uow.db, owner).create(spec)
    uow.commit()
    if created:
        _start(services, uow, batch)
    return {"batch": batch_view(batch, batches.progress(uow.db, batch.id))}, (
        201 if created else 200
    )


def _batch_from_request() -> NewBatch:
    if request.mimetype in NDJSON_TYPES:
        options = BatchOptions.model_validate(request.args.to_dict())
        raw_items, defaults, metadata = _ndjson_items(), CliOptionsBody(), {}
    else:
        body = parse_body(CreateBatch, checked_later={"items"})
        options, raw_items, defaults, metadata = body, body.items, body.defaults, body.metadata
    return NewBatch(
        items=_items(raw_items, defaults, get_services().isolation),
        max_concurrency=options.max_concurrency,
        notify_url=options.notify_url,
        idempotency_key=options.idempotency_key,
        metadata=metadata,
        defaults=defaults.model_dump(exclude_none=True, exclude_defaults=True),
    )


def _ndjson_items() -> list[Any]:
    items: list[Any] = []
    for number, line in enumerate(request.get_data().splitlines()):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            items.append(_BadLine(number + 1))
    return items


class _BadLine:
    def __init__(self, line: int) -> None:
        self.line = line


def _items(
    raw_items: list[Any], defaults: CliOptionsBody, policy: IsolationPolicy
) -> list[BatchItem]:
    """Every item checked; raises 413 past MAX_ITEMS, else 400 listing bad items by index."""
    if len(raw_items) > MAX_ITEMS:
        reason = f"at most {MAX_ITEMS} items per batch, got {len(raw_items)}"
        raise TooLarge(f"items: {reason}", [{"field": "items", "reason": reason}])
    if not raw_items:
        reason = "a batch needs at least one item"
        raise InvalidInput(f"items: {reason}", [{"field": "items", "reason": reason}])
    base = defaults.model_dump(exclude_none=True)
    items, errors = [], []
    for index, raw in enumerate(raw_items):
        if isinstance(raw, _BadLine):
            errors.append(_item_error(index, "(line)", f"line {raw.line} is not valid JSON"))
            continue
        if unstorable := unstorable_fields(raw):
            errors += [_item_error(index, e["field"], e["reason"]) for e in unstorable]
            continue
        try:
            item = BatchItemBody.model_validate({**base, **raw} if isinstance(raw, dict) else raw)
        except ValidationError as exc:
            errors += [_item_error(index, e["field"], e["reason"]) for e in validation_details(exc)]
            continue
        if len(item.prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
            errors.append(_item_error(index, "prompt", f"at most {MAX_PROMPT_BYTES} bytes"))
            continue
        try:
            isolation = item.granted(policy)
        except IsolationError as exc:
            errors.append(_item_error(index, exc.field, exc.message))
            continue
        items.append(
            BatchItem(
                prompt=item.prompt,
                model=item.model,
                options={**item.cli_options(), **isolation},
                metadata=item.metadata,
            )
        )
    if errors:
        first = errors[0]
        raise InvalidInput(
            f"{len(errors)} invalid item(s), nothing was created; first: item "
            f"{first['index']}: {first['field']}: {first['reason']}",
            errors[:MAX_REPORTED_ERRORS],
        )
    return items


def _item_error(index: int, field: str, reason: str) -> dict[str, Any]:
    return {"index": index, "field": f"items.{index}.{field}", "reason": reason}


def _flow(services: Services) -> BatchFlow:
    return BatchFlow(
        services.enqueue,
        services.redis,
        max_runs_per_owner=services.settings.max_runs_per_owner,
        ttl=int(services.settings.event_stream_ttl),
    )


def _start(services: Services, uow: UnitOfWork, batch: Batch) -> None:
    """Queue the batch's first window of items; each item that ends releases the next.

    If Redis is down the batch stays accepted: its items wait in PostgreSQL, and beat's
    sweeper releases them once Redis is back.
    """
    try:
        _flow(services).release(uow, batch.id)
        uow.commit()
    except (redis.RedisError, QueueUnavailable) as exc:
        uow.rollback()
        log.warning("batch %s: first items not queued yet (the sweeper will): %s", batch.id, exc)


@bp.get("/batches/<uuid:batch_id>")
@require_owner
def show_batch(owner: str, batch_id: uuid.UUID) -> Reply:
    """Counts by state, cost, progress and timings."""
    db = request_unit().db
    batch = BatchService(db, owner).get(batch_id)
    return {"batch": batch_view(batch, batches.progress(db, batch.id))}, 200


@bp.get("/batches")
@require_owner
def list_batches(owner: str) -> Reply:
    """The caller's batches, newest first, cursor-paged."""
    query = ListBatchesQuery.model_validate(request.args.to_dict())
    db = request_unit().db
    rows = BatchService(db, owner).page(
        limit=query.limit + 1,
        before=decode_cursor(query.cursor) if query.cursor else None,
    )
    page, more = rows[: query.limit], len(rows) > query.limit
    return {
        "batches": [batch_view(b, batches.progress(db, b.id)) for b in page],
        "next_cursor": encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    }, 200


@bp.get("/batches/<uuid:batch_id>/results")
@require_owner
def batch_results(owner: str, batch_id: uuid.UUID) -> Response:
    """NDJSON, one line per item in item order, streamed in chunks from PostgreSQL."""
    db = request_unit().db
    BatchService(db, owner).get(batch_id)

    def lines() -> Iterator[str]:
        for item in batches.results(db, batch_id):
            yield (
                json.dumps(
                    {
                        "index": item.index,
                        "session_id": str(item.session_id),
                        "run_id": str(item.run_id),
                        "status": item.status,
                        "result": item.result,
                        "error": item.error,
                        "total_cost_usd": _money(item.total_cost_usd),
                    }
                )
                + "\n"
            )

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@bp.post("/batches/<uuid:batch_id>/cancel")
@require_owner
def cancel_batch(owner: str, batch_id: uuid.UUID) -> Reply:
    """Queued items never start (they are cancelled in this request's commit); running
    ones are killed."""
    services = get_services()
    uow = request_unit()
    batch, running = BatchService(uow.db, owner).cancel(batch_id)
    uow.commit()
    for run in running:
        signal_cancel(services.redis, run.id)
    ttl = int(services.settings.event_stream_ttl)
    publish_batch(services.redis, uow.db, batch_id, BATCH_PROGRESS, ttl)
    services.enqueue.close_batch(batch_id)
    return {"batch": batch_view(batch, batches.progress(uow.db, batch.id))}, 202


def _money(value: Any) -> float | None:
    return float(value) if value is not None else None
