"""Django settings for the aiotq example project: Django's defaults, one demo app, and the
task queue's settings under the CELERY_ namespace (as Celery's Django example writes them)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# where the two SQLite files go (Django's database and the embedded broker): next to
# manage.py unless DEMO_DATA_DIR says otherwise (the tests use a temporary directory)
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", BASE_DIR))

SECRET_KEY = "django-insecure-example-only-change-me"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "demoapp.apps.DemoappConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "proj.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# -- aiotq, configured as Celery is (proj/celery.py reads every CELERY_ name) -------------
# the embedded SQLite broker: no server to run; use redis://localhost:6379/0 or
# amqp://guest:guest@localhost:5672// in production
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"sqlite:///{DATA_DIR / 'aiotq.db'}")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_TRACK_STARTED = True  # a running task's state is STARTED, not PENDING
CELERY_RESULT_EXTENDED = True  # results keep the task's name and arguments
CELERY_TASK_TIME_LIMIT = 30 * 60
CELERY_TIMEZONE = TIME_ZONE
