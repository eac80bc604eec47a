"""The database: models, the engine, migrations and the unit of work (one DB session per
request or task, with after-commit hooks)."""
