"""WSGI entry point: ``gunicorn api.wsgi:app`` or ``flask --app api.wsgi run``."""

from api.app import create_app

app = create_app()
