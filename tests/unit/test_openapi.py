"""The OpenAPI document: valid 3.1, and covering every route the app and the README have."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from api.app import create_app
from api.openapi import build_document
from orchestrator.settings import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def app() -> Flask:
    # Nothing is connected to: the app is only asked for its routes.
    return create_app(load_settings(env_file=None, jwt_secret="x" * 32))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document(max_wait_seconds=300)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_of_the_app_is_in_the_document(app: Flask, document: dict[str, Any]) -> None:
    documented = {
        (path, method.upper()) for path, ops in document["paths"].items() for method in ops
    }
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(path, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert routes - documented == set()
    assert documented - routes == set()


def test_every_route_the_readme_lists_is_in_the_document(document: dict[str, Any]) -> None:
    listed = re.findall(
        r"`(GET|POST|DELETE|WS) (/(?:api/v1/|healthz|readyz)[^`?\s]*)", README.read_text()
    )
    assert len(listed) > 20
    for method, path in listed:
        path = re.sub(r"<id>", "{id}", path)
        pattern = "^" + re.escape(path).replace(r"\{id\}", r"\{\w+\}") + "$"
        verb = "get" if method == "WS" else method.lower()
        found = [
            p for p in document["paths"] if re.match(pattern, p) and verb in document["paths"][p]
        ]
        assert found, f"{method} {path}"
        if method == "WS":
            assert document["paths"][found[0]]["get"]["x-websocket"] is True


def test_every_error_answer_has_the_one_error_shape(document: dict[str, Any]) -> None:
    errors = 0
    for ops in document["paths"].values():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400 and status != "414":  # gunicorn's, in HTML
                    errors += 1
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
                    if status in ("429", "503"):
                        assert "Retry-After" in answer["headers"]
    assert errors > 50
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def test_request_bodies_are_the_validating_models(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v1/sessions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert schema["additionalProperties"] is False  # Strict: unknown fields are a 400
    assert {"prompt", "notify_url", "network", "secrets", "limits"} <= set(schema["properties"])
