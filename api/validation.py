"""Parse a request's JSON body into a pydantic model, or answer 400 naming the field.

Every string of a body (keys too, however deeply nested) and of the query string is
checked for what PostgreSQL cannot store (:mod:`orchestrator.storable`) before anything
else looks at it, so such input answers 400 naming the field instead of failing an
insert with a 500. Headers need no check: the only one ccq reads, the bearer token,
never reaches the database as sent (a session token is looked up by its hash).
"""

from __future__ import annotations

from collections.abc import Collection
from itertools import islice
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel

from api.errors import InvalidInput
from orchestrator.storable import printable_path, unstorable_paths

M = TypeVar("M", bound=BaseModel)

# A refusal lists at most this many fields.
MAX_REPORTED_FIELDS = 100


def parse_body(model: type[M], *, checked_later: Collection[str] = ()) -> M:
    """The body as ``model``.

    Args:
        checked_later: top-level fields the caller checks itself, storability included
            (a batch's ``items``, whose errors name each item's index).

    Raises:
        InvalidInput: not a JSON object, or a string PostgreSQL cannot store (each named).
        pydantic.ValidationError: the model refused it (a 400 naming each field).
    """
    if not request.is_json:
        raise InvalidInput(
            "the body must be JSON (Content-Type: application/json)",
            [{"field": "(body)", "reason": "not JSON"}],
        )
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInput(
            "the body must be a JSON object",
            [{"field": "(body)", "reason": "malformed JSON or not an object"}],
        )
    check_storable({k: v for k, v in data.items() if k not in checked_later})
    return model.model_validate(data)


def unstorable_fields(value: Any) -> list[dict[str, str]]:
    """``[{"field", "reason"}]`` (the shape of a validation error's details) for each
    string, key or number of ``value`` that PostgreSQL cannot store, at most
    MAX_REPORTED_FIELDS of them."""
    return [
        {"field": printable_path(path) or "(body)", "reason": reason}
        for path, reason in islice(unstorable_paths(value), MAX_REPORTED_FIELDS)
    ]


def check_storable(value: Any) -> None:
    """Raises InvalidInput (400) naming every field of ``value`` PostgreSQL cannot store."""
    _refuse(unstorable_fields(value))


def check_query_string() -> None:
    """A ``before_request`` hook: every query parameter (name and value) is storable.

    Refused before any view runs, so a parameter that reaches the database (a batch
    upload's ``idempotency_key``) never carries a NUL there.
    """
    details = [
        detail
        for name, value in request.args.items(multi=True)
        for detail in unstorable_fields({name: value})
    ]
    _refuse(details[:MAX_REPORTED_FIELDS])


def _refuse(details: list[dict[str, str]]) -> None:
    """A 400 shaped as a validation error's (the first field in the message)."""
    if details:
        first = details[0]
        raise InvalidInput(f"{first['field']}: {first['reason']}", details)
