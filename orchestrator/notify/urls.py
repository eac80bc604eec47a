"""Webhook URLs: which are fit to receive notifications, and how to show one safely.

A webhook URL embeds its receiver's secret (Slack's and Discord's tokens are path
segments), so a URL is never logged, raised or returned in full: :func:`redact_url`
keeps only its origin.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

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
