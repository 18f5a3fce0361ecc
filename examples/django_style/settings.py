"""A Django-style settings module: aiotq reads the names under the AIOTQ_ namespace and
ignores the rest (a typo like AIOTQ_BROKER_ULR is an error naming it)."""

DEBUG = True
INSTALLED_APPS = ["accounts"]

AIOTQ_TASK_SERIALIZER = "json"
AIOTQ_RESULT_EXPIRES = 3600  # Celery's name; seconds
AIOTQ_TASK_ROUTES = {"examples.django_style.tasks.*": {"queue": "accounts"}}
# AIOTQ_BROKER_URL = "redis://localhost:6379/0"   # unset: the embedded SQLite file
