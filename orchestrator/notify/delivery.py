"""Delivering a webhook: one POST per attempt, the wait between attempts, and the
bookkeeping in Redis that makes delivery at-least-once and, as far as a webhook allows,
once.

Each attempt makes at most one HTTP request (a few seconds' timeout); a retryable
failure (no answer, timeout, 5xx, 408, 429) asks for another attempt after 2, 4, 8, … s,
or after the receiver's ``Retry-After``, and after ``MAX_ATTEMPTS`` delivery gives up with
a warning. Other 4xx and 3xx answers give up at once. ``tasks/notify.py`` schedules the
attempts (``self.retry``), so no worker sleeps.

Delivery is at-least-once, deduplicated as far as a webhook allows:

- after a 2xx the task sets ``ccq:notify:<kind>:<id>`` (``SET NX EX 7d``) and every
  execution checks it first, so a redelivered, retried or re-sent task for the same
  object never POSTs again once one POST was accepted;
- while one execution is POSTing it holds ``ccq:notify:<kind>:<id>:sending`` (its task ID,
  60 s TTL), so two executions never POST at the same moment; another task for the same
  object skips (the holder finishes or retries the job), and a redelivery of the holder's
  own task (same ID, after a worker died) takes the key over;
- a duplicate POST remains possible only when the receiver accepted a POST but ccq never
  learned it (the answer timed out, the worker died between the 2xx and the ``SET``, or
  Redis failed at that instant). Receivers that must not see duplicates can deduplicate
  on ``ccq.batch.id`` / ``ccq.run.id``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import requests
from requests.adapters import HTTPAdapter
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session as DbSession

from client.retry import parse_retry_after
from orchestrator.notify.notices import Notice, load_batch_notice, load_run_notice
from orchestrator.notify.urls import redact_url, validate_notify_url
from orchestrator.outbound import OutboundPolicy, OutboundRefused, Unresolved, pin
from orchestrator.runtime.locks import release_if_held, take_unless_held

log = logging.getLogger(__name__)

USER_AGENT = "ccq-notify/1"
# Attempts in all (the first and its retries): 2+4+…+256+300 s, about 14 minutes.
MAX_ATTEMPTS = 10
# Connect and read timeout of the one POST an attempt makes.
DELIVERY_TIMEOUT_SECONDS = 5.0
SENT_TTL_SECONDS = 7 * 24 * 3600
# Longer than one attempt can take (the load, a connect and a read timeout).
SENDING_TTL_SECONDS = 60
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0
BACKOFF_JITTER = 0.1  # each delay is shortened by up to this fraction
# A receiver's Retry-After is honoured up to this (longer waits are cut to it).
RETRY_AFTER_MAX_SECONDS = 900.0


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one POST.

    Attributes:
        ok: the receiver answered 2xx.
        retry: another attempt may succeed (no answer, a timeout, 5xx, 408 or 429).
        status: the HTTP status, None when no response came.
        retry_after: seconds the receiver asked us to wait (429/503 ``Retry-After``).
        reason: a short, URL-free description for logs ("HTTP 500", "timeout").
    """

    ok: bool
    retry: bool
    status: int | None = None
    retry_after: float | None = None
    reason: str = ""


def _retryable_status(status: int) -> bool:
    # 408 (the receiver timed out reading us) and 429 (rate limited) are worth another go.
    return status >= 500 or status in (408, 429)


class _PinnedTls(HTTPAdapter):
    """HTTPS to a pinned address: SNI and the certificate check use the URL's name."""

    def __init__(self, host: str) -> None:
        self._host = host
        super().__init__()

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs |= {"server_hostname": self._host, "assert_hostname": self._host}
        super().init_poolmanager(*args, **pool_kwargs)


def deliver(
    url: str, payload: dict[str, Any], *, timeout: float, policy: OutboundPolicy
) -> DeliveryResult:
    """POST ``payload`` as JSON to ``url`` once; never raises for network trouble.

    The host is resolved and judged by ``policy`` (orchestrator.outbound) here, at
    delivery, and the POST goes to exactly the address that was checked, with the URL's
    ``Host`` header and, for https, its name for SNI and the certificate: a name that
    resolved elsewhere when the URL was accepted (DNS rebinding) cannot move the target.
    A refusal is decided before any connection, so its reason says nothing about what
    listens there. Environment proxies are not used (a proxy would resolve the name
    again).

    Redirects are not followed (a webhook that moved is a configuration error, and
    following one would re-send the body somewhere unvetted). The response body is never
    read: only the status line and headers matter, so a slow or huge body cannot hold a
    worker. ``timeout`` bounds the connect and each read separately.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        target = pin(host, port, policy, timeout=timeout)
    except Unresolved as exc:  # perhaps a DNS outage: worth another attempt
        return DeliveryResult(ok=False, retry=True, reason=f"ccq outbound policy: {exc}")
    except OutboundRefused as exc:
        return DeliveryResult(ok=False, retry=False, reason=f"ccq outbound policy: {exc}")
    except ValueError:
        return DeliveryResult(ok=False, retry=False, reason="InvalidURL")
    address = f"[{target.address}]" if ":" in target.address else target.address
    pinned_url = urlunsplit((parts.scheme, f"{address}:{port}", parts.path, parts.query, ""))
    headers = {"User-Agent": USER_AGENT, "Host": parts.netloc.rpartition("@")[2]}
    try:
        with requests.Session() as session:
            session.trust_env = False
            session.mount("https://", _PinnedTls(target.host))
            with session.post(
                pinned_url,
                json=payload,
                headers=headers,
                timeout=(timeout, timeout),
                allow_redirects=False,
                stream=True,
            ) as response:
                status = response.status_code
                retry_after = (
                    parse_retry_after(response.headers.get("Retry-After"))
                    if status in (429, 503)
                    else None
                )
    except requests.Timeout:
        return DeliveryResult(ok=False, retry=True, reason="timeout")
    except requests.ConnectionError:
        return DeliveryResult(ok=False, retry=True, reason="connection failed")
    except requests.RequestException as exc:
        # An unusable URL or request: another attempt would fail the same way. Only the
        # exception's type is kept: its message quotes the URL.
        return DeliveryResult(ok=False, retry=False, reason=type(exc).__name__)
    if 200 <= status < 300:
        return DeliveryResult(ok=True, retry=False, status=status, reason=f"HTTP {status}")
    reason = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
    return DeliveryResult(
        ok=False,
        retry=_retryable_status(status),
        status=status,
        retry_after=retry_after,
        reason=reason,
    )


def backoff_seconds(attempt: int, *, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt`` (0-based): 2, 4, 8, … s, at most 300 s.

    Each delay is shortened by up to 10 % at random (``rand`` returns [0, 1)), so many
    notifications failing together do not come back in lockstep.
    """
    exponent = min(max(attempt, 0), 32)
    delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0**exponent)
    return delay * (1.0 - BACKOFF_JITTER * rand())


def retry_delay(
    attempt: int,
    retry_after: float | None,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """The receiver's ``Retry-After`` if it gave one (within 1 s … 15 min), else backoff."""
    if retry_after is not None:
        return min(RETRY_AFTER_MAX_SECONDS, max(1.0, retry_after))
    return backoff_seconds(attempt, rand=rand)


# --- one attempt, with its bookkeeping ------------------------------------------------------


class Kind(StrEnum):
    BATCH = "batch"
    RUN = "run"


def sent_key(kind: Kind, object_id: uuid.UUID | str) -> str:
    """Set once a receiver accepted the notification for this object."""
    return f"ccq:notify:{kind.value}:{object_id}"


def sending_key(kind: Kind, object_id: uuid.UUID | str) -> str:
    """Held (by a task ID) while one attempt is POSTing this object's notification."""
    return f"{sent_key(kind, object_id)}:sending"


_LOADERS: dict[Kind, Callable[[DbSession, uuid.UUID], Notice | None]] = {
    Kind.BATCH: load_batch_notice,
    Kind.RUN: load_run_notice,
}


@dataclass(frozen=True)
class RetryLater:
    """The attempt failed and another may succeed, after ``countdown`` seconds."""

    countdown: float
    reason: str  # for logs and Flower: the redacted URL and what went wrong


@dataclass(frozen=True)
class _Failed:
    delivery: DeliveryResult
    where: str  # the redacted URL


def attempt(
    db: DbSession,
    client: redis.Redis,
    kind: Kind,
    object_id: str,
    *,
    holder: str,
    retries: int,
    policy: OutboundPolicy,
) -> dict[str, Any] | RetryLater:
    """Make attempt number ``retries + 1`` to deliver the object's notification.

    Returns:
        The final answer (delivered, skipped or given up), or :class:`RetryLater`.
        ``holder`` names this attempt's task: a redelivery of the same task takes its
        own ``sending`` key over. ``policy`` judges the target (see :func:`deliver`).
    """
    answer: dict[str, Any] = {"kind": kind.value, "id": object_id}
    number = retries + 1
    try:
        target = uuid.UUID(object_id)
    except ValueError:
        return {**answer, "skipped": "not_found"}
    try:
        outcome = _post_once(db, client, kind, target, holder, policy)
    except (OperationalError, redis.RedisError) as exc:
        # ccq's own PostgreSQL or Redis is down: the receiver was not reached; try later.
        reason = f"{type(exc).__name__} (ccq's database or Redis)"
        outcome = _Failed(DeliveryResult(ok=False, retry=True, reason=reason), where="-")
    if isinstance(outcome, dict):
        return {**answer, **outcome, "attempts": number}
    delivery = outcome.delivery
    if delivery.retry and number < MAX_ATTEMPTS:
        countdown = retry_delay(retries, delivery.retry_after)
        log.info(
            "%s %s: attempt %d/%d to notify %s failed (%s); next in %.0fs",
            kind,
            object_id,
            number,
            MAX_ATTEMPTS,
            outcome.where,
            delivery.reason,
            countdown,
        )
        return RetryLater(countdown, f"{outcome.where}: {delivery.reason}")
    log.warning(
        "%s %s: gave up notifying %s after %d attempt(s): %s",
        kind,
        object_id,
        outcome.where,
        number,
        delivery.reason,
    )
    return {
        **answer,
        "delivered": False,
        "gave_up": True,
        "status": delivery.status,
        "reason": delivery.reason,
        "attempts": number,
    }


def _post_once(
    db: DbSession,
    client: redis.Redis,
    kind: Kind,
    object_id: uuid.UUID,
    holder: str,
    policy: OutboundPolicy,
) -> dict[str, Any] | _Failed:
    """One attempt's work: a final answer (dict) or a failed POST to judge."""
    done = sent_key(kind, object_id)
    if client.exists(done):
        return {"skipped": "already_sent"}
    notice = _LOADERS[kind](db, object_id)
    db.rollback()  # nothing to write: end the read before the POST
    if notice is None:
        return {"skipped": "not_found"}
    if not notice.url:
        return {"skipped": "no_notify_url"}
    if not notice.finished:
        return {"skipped": "not_finished"}
    where = redact_url(notice.url)
    try:
        validate_notify_url(notice.url)
    except ValueError as exc:
        log.warning("%s %s: not sending to %s: the URL %s", kind, object_id, where, exc)
        return {"delivered": False, "gave_up": True, "reason": f"invalid URL: {exc}"}
    sending = sending_key(kind, object_id)
    if not take_unless_held(client, sending, holder, SENDING_TTL_SECONDS):
        return {"skipped": "in_flight"}
    try:
        if client.exists(done):  # another attempt finished while we loaded
            return {"skipped": "already_sent"}
        delivery = deliver(
            notice.url, notice.payload, timeout=DELIVERY_TIMEOUT_SECONDS, policy=policy
        )
        if delivery.ok:
            client.set(done, "1", nx=True, ex=SENT_TTL_SECONDS)
    finally:
        with contextlib.suppress(redis.RedisError):
            release_if_held(client, sending, holder)
    if delivery.ok:
        log.info("%s %s: notified %s (%s)", kind, object_id, where, delivery.reason)
        return {"delivered": True, "status": delivery.status}
    return _Failed(delivery, where)
