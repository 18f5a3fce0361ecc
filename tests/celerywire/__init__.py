"""Helpers for tests/test_celery_wire.py: real Celery in a virtualenv of its own."""
