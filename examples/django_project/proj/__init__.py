# This makes sure the app is always imported when Django starts, so that @shared_task uses
# it (Celery's `from .celery import app as celery_app`).
from .celery import app as celery_app

__all__ = ("celery_app",)
