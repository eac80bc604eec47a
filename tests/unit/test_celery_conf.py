"""What a worker reports as its configuration (`celery inspect conf`, `report`, Flower's
worker page) holds no secret of ccq's settings, and tasks still find the settings."""

from __future__ import annotations

import json

from celery.utils.saferepr import saferepr
from celery.utils.serialization import jsonify

from orchestrator.settings import load_settings
from tasks.celery_app import make_celery, settings_of

DATABASE_PASSWORD = "db-pw-5b1e"
REDIS_PASSWORD = "redis-pw-9c2d"
JWT_SECRET = "jwt-secret-" + "7" * 32
FLOWER_PASSWORD = "flower-pw-3a8f"


def test_the_reported_configuration_holds_no_secret() -> None:
    settings = load_settings(
        env_file=None,
        database_url=f"postgresql+psycopg://ccq:{DATABASE_PASSWORD}@db:5432/ccq",
        redis_url=f"redis://:{REDIS_PASSWORD}@redis:6379/0",
        jwt_secret=JWT_SECRET,
        flower_basic_auth=f"ops:{FLOWER_PASSWORD}",
    )
    app = make_celery(settings)
    try:
        # What the `conf` and `report` remote controls send, defaults included.
        table = app.conf.table(with_defaults=True)
        reported = json.dumps(jsonify(table, unknown_type_filter=saferepr))
        reported += app.conf.humanize(with_defaults=True)
        assert settings_of(app) is settings
    finally:
        app.close()
    assert "ccq_settings" not in reported
    for secret in (DATABASE_PASSWORD, REDIS_PASSWORD, JWT_SECRET, FLOWER_PASSWORD):
        assert secret not in reported
    assert "redis:6379" in reported  # the broker URL is there, masked
