"""Batches: submit up to 10,000 prompts at once, follow their progress, export results."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request
from pydantic import ValidationError
from sqlalchemy.orm import Session as DbSession

from api import batch_input
from api.auth import require_owner
from api.batch_input import BadLine, Limits
from api.errors import InvalidInput, validation_details
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
from api.sessions import Reply, pending_cap_error
from api.validation import check_storable, unstorable_fields
from orchestrator.db.models import Batch
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import batches
from orchestrator.domain.admission import PendingCapReached
from orchestrator.domain.batch_flow import BatchFlow
from orchestrator.domain.batches import (
    BatchItem,
    BatchService,
    ItemResult,
    NewBatch,
    batch_view,
)
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
    limit = services.settings.max_pending_batch_items_per_owner
    try:
        batch, created = BatchService(uow.db, owner, limit).create(spec)
    except PendingCapReached as exc:
        raise pending_cap_error(exc, "items") from None
    uow.commit()
    if created:
        _start(services, uow, batch)
    return {"batch": batch_view(batch, batches.progress(uow.db, batch.id))}, (
        201 if created else 200
    )


def _batch_from_request() -> NewBatch:
    settings = get_services().settings
    limits = Limits(
        max_bytes=settings.batch_max_bytes,
        max_items=settings.batch_max_items,
        max_item_bytes=settings.batch_max_item_bytes,
    )
    if request.mimetype in NDJSON_TYPES:
        options = BatchOptions.model_validate(request.args.to_dict())
        raw = batch_input.read_ndjson(limits)
        defaults, metadata = CliOptionsBody(), {}
    else:
        if not request.is_json:
            raise InvalidInput(
                "the body must be JSON (Content-Type: application/json)",
                [{"field": "(body)", "reason": "not JSON"}],
            )
        raw = batch_input.read_json(limits, CreateBatch.model_fields)
        check_storable({k: v for k, v in raw.fields.items() if k != "items"})
        body = CreateBatch.model_validate(
            {"items": [], **raw.fields} if raw.has_items else raw.fields
        )
        options, defaults, metadata = body, body.defaults, body.metadata
    return NewBatch(
        items=_items(raw.items, defaults, get_services().isolation),
        max_concurrency=options.max_concurrency,
        notify_url=options.notify_url,
        idempotency_key=options.idempotency_key,
        metadata=metadata,
        defaults=defaults.model_dump(exclude_none=True, exclude_defaults=True),
    )


def _items(
    raw_items: list[str | bytes | BadLine], defaults: CliOptionsBody, policy: IsolationPolicy
) -> list[BatchItem]:
    """Every item checked (each parsed from its JSON text in turn); raises 400 listing bad
    items by index. The count was bounded while reading (api.batch_input)."""
    if not raw_items:
        reason = "a batch needs at least one item"
        raise InvalidInput(f"items: {reason}", [{"field": "items", "reason": reason}])
    base = defaults.model_dump(exclude_none=True)
    items, errors = [], []
    for index, text in enumerate(raw_items):
        if isinstance(text, BadLine):
            errors.append(_item_error(index, "(line)", f"line {text.line} is not valid JSON"))
            continue
        raw = json.loads(text)
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
        window_per_owner=services.settings.batch_window_per_owner,
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
    """NDJSON, one line per item in item order, streamed in pages from PostgreSQL."""
    services = get_services()
    db = request_unit().db
    BatchService(db, owner).get(batch_id)
    # The first page in the request, so a busy pool is still a 503; the request's
    # connection is returned when the view returns (no stream_with_context), before a
    # byte is written, and each later page takes one only while it is read.
    first = _results_page(services, db, batch_id, -1)
    return Response(_result_lines(services, batch_id, first), mimetype="application/x-ndjson")


def _results_page(
    services: Services, db: DbSession, batch_id: uuid.UUID, after: int
) -> list[ItemResult]:
    settings = services.settings
    return batches.results_page(
        db,
        batch_id,
        after,
        max_items=settings.batch_results_page_items,
        max_bytes=settings.batch_results_page_bytes,
    )


def _result_lines(services: Services, batch_id: uuid.UUID, page: list[ItemResult]) -> Iterator[str]:
    """Writes a page, then reads the next with a connection held only for that read: a
    client that stops reading holds a greenlet, never a database connection."""
    while page:
        for item in page:
            yield _result_line(item)
        after = page[-1].index
        del page  # the written page is not kept while the next is read
        with services.session_factory() as db:
            page = _results_page(services, db, batch_id, after)


def _result_line(item: ItemResult) -> str:
    line = {
        "index": item.index,
        "session_id": str(item.session_id),
        "run_id": str(item.run_id),
        "status": item.status,
        "result": item.result,
        "error": item.error,
        "total_cost_usd": _money(item.total_cost_usd),
    }
    return json.dumps(line) + "\n"


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
