"""Money and durations as people read them: the CLI's lines and the webhooks' payloads.

One copy for every reader: this package imports nothing of the server, so the server's
notifications import it too.
"""

from __future__ import annotations

from decimal import Decimal

CENT = Decimal("0.01")


def format_cost(usd: float | Decimal | None, *, cents: bool = False, unknown: str = "-") -> str:
    """``$0.0111``: four places, as the CLI reports every run; ``$0`` for nothing.

    With ``cents`` (a summary for a chat message): two places, ``$12.50`` and ``$0.00``,
    and four only under a cent, where two would say nothing. ``unknown`` stands for None.
    """
    if usd is None:
        return unknown
    if cents:
        return f"${usd:.4f}" if 0 < usd < CENT else f"${usd:.2f}"
    return "$0" if usd == 0 else f"${usd:.4f}"


def format_duration(seconds: float | None, *, tenths: bool = False) -> str:
    """``45s``, ``3m12s``, ``2h05m``: the two largest whole units; ``-`` if unknown.

    With ``tenths``, under a minute shows tenths of a second (``0.2s``, ``59.0s``): a
    single run is often that short.
    """
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{max(0.0, seconds):.1f}s" if tenths else f"{max(0, int(seconds))}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_cost_cents(usd: float | Decimal | None) -> str:
    """A summary's cost, as a chat message shows it: ``$12.50``, ``$0.0040``; ``$?``
    when unknown."""
    return format_cost(usd, cents=True, unknown="$?")
