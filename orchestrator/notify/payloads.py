"""Webhook notifications: a JSON POST to a batch's or session's ``notify_url`` when it ends.

This module builds the payloads; ``notices`` reads what to send from PostgreSQL and
``delivery`` sends it (one attempt, the backoff between attempts, at-most-once-per-object
bookkeeping). ``tasks/notify.py`` only schedules the attempts.

One payload suits every common receiver as it is:

- Slack incoming webhooks read ``text`` (mrkdwn; ``&``, ``<`` and ``>`` are escaped, so
  nothing a run printed can become a link or an ``<!channel>`` ping);
- Discord webhooks read ``content`` (at most 2000 characters), ``embeds`` and
  ``allowed_mentions`` (none: an ``@everyone`` in a result pings nobody);
- anything else reads the structured ``ccq`` object (``ccq.event`` says what it is).

Webhook URLs embed secrets, so a URL is never logged, raised or returned in full (see
``orchestrator.notify.urls``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from client.formatting import format_cost_cents as format_cost
from client.formatting import format_duration as format_duration  # tests import it here
from orchestrator.db.models import RunStatus
from orchestrator.notify.urls import ELLIPSIS

# Discord rejects longer `content`; Slack truncates `text` past 40,000 but advises 4,000.
DISCORD_CONTENT_MAX = 2000
SLACK_TEXT_MAX = 3000
# Discord embed limits (description 4096, field value 1024, 6000 in all) with headroom.
EMBED_DESCRIPTION_MAX = 3000
EMBED_FIELD_MAX = 1000
# How much of a run's result and error the structured payload carries, and the text shows.
RESULT_MAX = 4000
ERROR_MAX = 1000
SNIPPET_MAX = 1500
PAYLOAD_VERSION = 1


_STATUS_COLOURS = {
    "succeeded": 0x2EB67D,
    "failed": 0xE01E5A,
    "timed_out": 0xECB22E,
    "cancelled": 0x9E9E9E,
}
# The order counts are listed in after "succeeded"; unknown states follow, sorted.
_COUNT_ORDER = ("failed", "timed_out", "cancelled", "running", "queued", "not_started")
_LISTED_STATES = frozenset((*_COUNT_ORDER, "succeeded"))


# --- text helpers ------------------------------------------------------------------------


def _utf16_units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def clip(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` characters, ending with ``marker`` if it was cut.

    Lengths count UTF-16 code units (an emoji outside the BMP counts 2), which is at least
    the number of code points: the result fits whichever of the two a receiver counts,
    and a character is never split in half.
    """
    if limit <= 0:
        return ""
    total = sum(_utf16_units(ch) for ch in text)
    if total <= limit:
        return text
    budget = limit - sum(_utf16_units(ch) for ch in marker)
    if budget < 0:
        return ""
    used, end = 0, 0
    for end, ch in enumerate(text):  # noqa: B007 - `end` is the cut position
        units = _utf16_units(ch)
        if used + units > budget:
            break
        used += units
    return text[:end] + marker


_PARTIAL_ENTITY = re.compile(r"&[a-z]{0,3}$")


def slack_escape(text: str) -> str:
    """Escape what Slack's mrkdwn treats as markup: ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip_slack(escaped: str, limit: int) -> str:
    """Clip escaped Slack text without leaving half an ``&amp;`` at the cut."""
    clipped = clip(escaped, limit)
    if clipped == escaped:
        return escaped
    return _PARTIAL_ENTITY.sub("", clipped[: -len(ELLIPSIS)]) + ELLIPSIS


def short_id(value: uuid.UUID | str) -> str:
    return str(value)[:8] + ELLIPSIS


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _cost_number(cost: Decimal | None) -> float | None:
    # The API reports costs as JSON numbers too.
    return float(cost) if cost is not None else None


# --- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSummary:
    """What a batch notification says; ``counts`` maps item run states to how many."""

    id: uuid.UUID
    status: str
    total_items: int
    counts: Mapping[str, int]
    total_cost_usd: Decimal
    created_at: datetime | None
    finished_at: datetime | None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    """What a run notification says (``result`` and ``error`` are clipped when built)."""

    session_id: uuid.UUID
    run_id: uuid.UUID
    status: str
    result: str | None
    error: str | None
    total_cost_usd: Decimal | None
    finished_at: datetime | None
    started_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    error_code: str | None = None  # e.g. "budget_exceeded"
    metered_cost_usd: Decimal | None = None


def _ordered_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(state, counts.get(state, 0)) for state in _COUNT_ORDER]
    extra = sorted((state, n) for state, n in counts.items() if state not in _LISTED_STATES)
    return [(state, n) for state, n in known + extra if n > 0]


def _name_of(metadata: Mapping[str, Any]) -> str | None:
    name = metadata.get("name")
    if isinstance(name, str) and name.strip():
        return clip(" ".join(name.split()), 100)
    return None


def batch_headline(batch: BatchSummary) -> str:
    """``ccq batch 1234abcd… succeeded: 198/200 succeeded, 2 failed, $0.43 in 3m12s``."""
    name = _name_of(batch.metadata)
    label = f"ccq batch {short_id(batch.id)}" + (f" ({name})" if name else "")
    parts = [f"{batch.counts.get('succeeded', 0)}/{batch.total_items} succeeded"]
    parts += [f"{n} {state.replace('_', ' ')}" for state, n in _ordered_counts(batch.counts)]
    tail = format_cost(batch.total_cost_usd)
    took = _duration(batch.created_at, batch.finished_at)
    if took is not None:
        tail += f" in {format_duration(took)}"
    return f"{label} {batch.status.replace('_', ' ')}: {', '.join(parts)}, {tail}"


def batch_payload(batch: BatchSummary) -> dict[str, Any]:
    """The JSON body announcing a finished batch (Slack, Discord and generic alike)."""
    headline = batch_headline(batch)
    took = _duration(batch.created_at, batch.finished_at)
    fields = [
        {"name": "Items", "value": str(batch.total_items), "inline": True},
        {"name": "Cost", "value": format_cost(batch.total_cost_usd), "inline": True},
    ]
    if took is not None:
        fields.append({"name": "Duration", "value": format_duration(took), "inline": True})
    by_state = [("succeeded", batch.counts.get("succeeded", 0)), *_ordered_counts(batch.counts)]
    counts_line = ", ".join(f"{state.replace('_', ' ')}: {n}" for state, n in by_state)
    fields.append({"name": "Items by state", "value": clip(counts_line, EMBED_FIELD_MAX)})
    return {
        "text": _clip_slack(slack_escape(headline), SLACK_TEXT_MAX),
        "content": clip(headline, DISCORD_CONTENT_MAX),
        "allowed_mentions": {"parse": []},
        "embeds": [
            _embed(
                title=f"ccq batch {short_id(batch.id)} {batch.status}",
                description=None,
                status=batch.status,
                fields=fields,
                timestamp=batch.finished_at,
            )
        ],
        "ccq": {
            "version": PAYLOAD_VERSION,
            "event": "batch.finished",
            "batch": {
                "id": str(batch.id),
                "status": batch.status,
                "total_items": batch.total_items,
                "counts": dict(batch.counts),
                "total_cost_usd": _cost_number(batch.total_cost_usd),
                "created_at": _iso(batch.created_at),
                "finished_at": _iso(batch.finished_at),
                "duration_seconds": took,
                "metadata": dict(batch.metadata),
            },
        },
    }


def run_headline(run: RunSummary) -> str:
    """``ccq run 5678abcd… (session 1234abcd…) succeeded, $0.01 in 12s``."""
    name = _name_of(run.metadata)
    label = f"ccq run {short_id(run.run_id)} (session {short_id(run.session_id)}"
    label += f", {name})" if name else ")"
    tail = format_cost(run.total_cost_usd) if run.total_cost_usd is not None else ""
    took = _duration(run.started_at, run.finished_at)
    if took is not None:
        tail += f" in {format_duration(took)}" if tail else f"in {format_duration(took)}"
    return f"{label} {run.status.replace('_', ' ')}" + (f", {tail}" if tail else "")


def run_payload(run: RunSummary) -> dict[str, Any]:
    """The JSON body announcing a finished run of a session with a ``notify_url``."""
    headline = run_headline(run)
    result = clip(run.result, RESULT_MAX) if run.result is not None else None
    error = clip(run.error, ERROR_MAX) if run.error is not None else None
    detail = error if error and run.status != RunStatus.SUCCEEDED else (result or error or "")
    snippet = clip(detail.strip(), SNIPPET_MAX)
    text = slack_escape(headline) + (f"\n{slack_escape(snippet)}" if snippet else "")
    content = headline + (f"\n{snippet}" if snippet else "")
    fields = [{"name": "Status", "value": run.status, "inline": True}]
    if run.total_cost_usd is not None:
        fields.append({"name": "Cost", "value": format_cost(run.total_cost_usd), "inline": True})
    took = _duration(run.started_at, run.finished_at)
    if took is not None:
        fields.append({"name": "Duration", "value": format_duration(took), "inline": True})
    return {
        "text": _clip_slack(text, SLACK_TEXT_MAX),
        "content": clip(content, DISCORD_CONTENT_MAX),
        "allowed_mentions": {"parse": []},
        "embeds": [
            _embed(
                title=f"ccq run {short_id(run.run_id)} {run.status}",
                description=clip(detail.strip(), EMBED_DESCRIPTION_MAX) or None,
                status=run.status,
                fields=fields,
                timestamp=run.finished_at,
            )
        ],
        "ccq": {
            "version": PAYLOAD_VERSION,
            "event": "run.finished",
            "run": {
                "id": str(run.run_id),
                "session_id": str(run.session_id),
                "status": run.status,
                "result": result,
                "result_truncated": result is not None and result != run.result,
                "error": error,
                "error_code": run.error_code,
                "total_cost_usd": _cost_number(run.total_cost_usd),
                "metered_cost_usd": _cost_number(run.metered_cost_usd),
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "duration_seconds": took,
            },
        },
    }


def _embed(
    *,
    title: str,
    description: str | None,
    status: str,
    fields: list[dict[str, Any]],
    timestamp: datetime | None,
) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": clip(title, 256),
        "color": _STATUS_COLOURS.get(status, 0x5865F2),
        "fields": fields,
    }
    if description:
        embed["description"] = description
    if timestamp is not None:
        embed["timestamp"] = timestamp.astimezone(UTC).isoformat()
    return embed
