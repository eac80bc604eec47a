"""The web process: Flask + flask-sock. It never touches Docker and never blocks on a task."""

from api.app import create_app

__all__ = ["create_app"]
