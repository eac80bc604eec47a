"""The Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

from api import batch_stream, batches, children, health, openapi, sessions, streams
from api.errors import register_error_handlers
from api.extensions import EXTENSION_KEY, Services, close_request_unit
from api.validation import check_query_string
from orchestrator.settings import Settings, load_settings


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the API app: settings, shared resources, blueprints, error handlers."""
    settings = settings or load_settings()
    app = Flask("ccq")
    # Bodies past this are refused before any parsing (413); a batch upload sets its
    # own, larger limit and is read incrementally (api.batch_input).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = services or Services.from_settings(settings)
    register_error_handlers(app)
    app.before_request(check_query_string)  # no query parameter PostgreSQL cannot store
    app.teardown_appcontext(close_request_unit)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(children.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(streams.bp)
    app.register_blueprint(batch_stream.bp)
    logging.basicConfig(level=settings.log_level)
    return app
