"""Parse a request's JSON body into a pydantic model, or answer 400 naming the field."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel

from api.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M]) -> M:
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
    return model.model_validate(data)
