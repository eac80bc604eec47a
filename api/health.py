"""Ops endpoints: liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.extensions import get_services
from orchestrator.readiness import find_problems

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """The process is up (no dependency is consulted)."""
    return jsonify({"status": "ok"}), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Every dependency a run needs answers; 503 names each one that does not.

    Either way it says how session containers are networked (``network``: ``isolated``,
    or ``open`` when the operator turned isolation off), so an open install shows.
    """
    services = get_services()
    network = services.settings.network_mode
    problems = find_problems(services.engine, services.redis)
    if problems:
        names = ", ".join(sorted(problems))
        body = {
            "error": {
                "code": "dependency_unavailable",
                "message": f"not ready: {names}",
                "details": problems,
            },
            "network": network,
        }
        return jsonify(body), 503
    return jsonify({"status": "ready", "network": network}), 200
