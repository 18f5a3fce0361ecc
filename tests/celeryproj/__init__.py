"""A project laid out as Celery's docs lay one out (`proj/celery.py` holds `app`), for
`aiotq -A tests.celeryproj worker` (tests/test_cli_celery.py)."""
