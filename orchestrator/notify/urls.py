"""Webhook URLs: which are fit to receive notifications, and how to show one safely.

A webhook URL embeds its receiver's secret (Slack's and Discord's tokens are path
segments), so a URL is never logged, raised or returned in full: :func:`redact_url`
keeps only its origin.

Where a URL may point is the outbound policy's call (orchestrator.outbound):
:func:`check_notify_url` applies it when a URL is accepted, and delivery applies it again,
pinned, when it POSTs (a name may resolve elsewhere by then).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from orchestrator.outbound import RESOLVE_TIMEOUT_SECONDS, OutboundPolicy, OutboundRefused, pin

MAX_URL_LENGTH = 2000
ELLIPSIS = "…"


def validate_notify_url(url: str) -> str:
    """Return ``url`` if it is fit to be a webhook target; raise ``ValueError`` saying why.

    Accepted: ``http``/``https``, a host, at most 2000 characters, no ``user:pass@``
    (credentials belong in the path or query, as Slack and Discord put them), no
    ``#fragment`` (never sent to the server, so always a mistake), no whitespace or
    control characters.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials (user:password@)")
    if not parts.hostname:
        raise ValueError("must name a host")
    if port == 0:
        raise ValueError("must not use port 0")
    if "#" in url:
        raise ValueError("must not contain a fragment (#...)")
    if parts.netloc.startswith("[") and not _is_ipv6(parts.hostname):
        raise ValueError("is not a valid URL")
    return url


def check_notify_url(
    url: str, policy: OutboundPolicy, *, timeout: float = RESOLVE_TIMEOUT_SECONDS
) -> str:
    """:func:`validate_notify_url`, then the outbound policy on the URL's host and port.

    A name is resolved now (within ``timeout``) and refused unless every address it has
    passes; a name that does not resolve is refused too: a webhook that cannot be
    judged now is more likely a typo than a receiver still to come, and the caller can
    retry. Nothing is connected to.

    Raises:
        ValueError: saying why (the port, the address, or the name), never quoting the URL.
    """
    validate_notify_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        pin(parts.hostname or "", port, policy, timeout=timeout)
    except OutboundRefused as exc:
        raise ValueError(f"is refused by ccq's outbound policy: {exc}") from None
    return url


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: enough to say where, nothing of the secret path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if not parts.scheme or not host:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    origin = f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}"
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{origin}/{ELLIPSIS}" if hidden else f"{origin}/"
