"""Event IDs: Redis stream IDs ``"<ms>-<n>"``, the cursor every tail and history page uses.

Kept free of heavy imports: the ``ccq`` client parses them too.
"""

from __future__ import annotations

import re

_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


class InvalidCursor(ValueError):
    """An ``after`` value that is not an event ID."""


# PostgreSQL keeps both parts as BIGINT; Redis never comes near this within a millisecond.
MAX_ID_PART = 2**63 - 1


def parse_stream_id(value: str) -> tuple[int, int]:
    """``"<ms>-<n>"`` as numbers, the order Redis gives stream IDs."""
    match = _STREAM_ID.fullmatch(value)
    if match is None or max(int(match[1]), int(match[2])) > MAX_ID_PART:
        raise InvalidCursor("must be an event id like 1700000000000-0")
    return int(match[1]), int(match[2])


def format_stream_id(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"
