"""What PostgreSQL cannot store, found (for the API to refuse) or replaced (in CLI output).

PostgreSQL (UTF-8) refuses, in ``text`` and in ``jsonb`` alike:

- **U+0000 (NUL)**: ``text`` cannot hold it, and ``jsonb`` refuses the ``\\u0000`` escape;
- **surrogate code points (U+D800 to U+DFFF)**: not characters, so UTF-8 cannot encode
  them. Python's ``json`` joins a valid ``\\ud83d\\ude00`` pair into one character, so
  the surrogates a ``str`` still holds after parsing are lone ones (a JSON ``\\ud800``,
  or the bytes ``ED A0 80``, which ``json.loads`` decodes with ``surrogatepass``);
- **NaN and ±Infinity** in ``jsonb`` (JSON has no such numbers; Python's ``json`` reads
  and writes them anyway).

Everything else is stored as sent, other control characters and non-characters such as
U+FFFF included.

The API refuses such input with a 400 naming the field (:func:`unstorable_paths`); the
CLI's output, which ccq must keep whatever it holds, is made storable instead
(:func:`storable_text`, :func:`storable_json`): each NUL and each surrogate code point
becomes one U+FFFD (REPLACEMENT CHARACTER), a non-finite number becomes ``null`` (what
JavaScript's ``JSON.stringify`` writes for one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, overload

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

JsonPath = tuple[str | int, ...]


@overload
def storable_text(text: str) -> str: ...
@overload
def storable_text(text: None) -> None: ...
def storable_text(text: str | None) -> str | None:
    """``text`` with every NUL and surrogate code point replaced by U+FFFD (the same
    object when there is none, the common case; None stays None)."""
    if text is None or _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_json(value: Any) -> Any:
    """A JSON value (dicts, lists, strings, numbers, booleans, None) with every string,
    keys included, made storable by :func:`storable_text`, and NaN and ±Infinity as None.

    Two keys that become equal keep the later one's value, as a JSON object with a
    repeated key does.
    """
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {
            storable_text(k) if isinstance(k, str) else k: storable_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [storable_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def unstorable_reason(text: str) -> str | None:
    """Why ``text`` cannot be stored (its first bad character), or None if it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "NUL" if char == "\x00" else "a lone surrogate"
    return f"contains U+{ord(char):04X} ({kind}), which cannot be stored"


def unstorable_paths(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, str]]:
    """``(path, reason)`` for each string, key or number of a parsed JSON value that
    PostgreSQL cannot store, in document order.

    A bad key's path ends with ``"[key]"`` (as pydantic names a key's error) and its value
    is not looked into.
    """
    if isinstance(value, str):
        if (reason := unstorable_reason(value)) is not None:
            yield path, reason
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (reason := unstorable_reason(key)) is not None:
                yield (*path, key, "[key]"), reason
            else:
                yield from unstorable_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_paths(item, (*path, index))
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, "is not a finite number (JSON has no NaN or Infinity)"


def printable_path(path: JsonPath) -> str:
    """``path`` as pydantic's field names read (``items.3.prompt``), with each character
    that cannot be stored shown as its ``\\uXXXX`` escape, so the name itself is
    storable and shows where the bad character is."""
    return ".".join(
        _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(part)) for part in path
    )
