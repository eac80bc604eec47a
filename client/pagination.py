"""Cursor pages: every list endpoint answers ``{"<items>": [...], "next_cursor"}``.

The helpers take a function that reads one page, so they serve sessions, batches and
anything paged the same way, and are unit-tested with a stub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]
PageReader = Callable[[str | None], JsonObject]


def iter_items(read_page: PageReader, key: str) -> Iterator[JsonObject]:
    """Every item of every page, in order, reading a page only when the last is used up."""
    cursor: str | None = None
    while True:
        page = read_page(cursor)
        yield from page.get(key) or []
        cursor = page.get("next_cursor")
        if not cursor:
            return


@dataclass(frozen=True)
class Collected:
    """Items read, and the cursor of the page after them (None: there is no more)."""

    items: list[JsonObject]
    next_cursor: str | None


def collect(read_page: PageReader, key: str, *, all_pages: bool) -> Collected:
    """The first page's items, or with ``all_pages`` every page's."""
    items: list[JsonObject] = []
    cursor: str | None = None
    while True:
        page = read_page(cursor)
        items += page.get(key) or []
        cursor = page.get("next_cursor")
        if not (all_pages and cursor):
            return Collected(items, cursor)
