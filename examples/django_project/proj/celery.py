"""The aiotq app of this Django project: `aiotq worker -A proj -l INFO` finds it here."""

import os

from aiotq import App

# Set the default Django settings module for the `aiotq` program.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = App("proj")

# Read the settings from Django's settings: every name starting with CELERY_ is an aiotq
# (Celery) setting, `CELERY_BROKER_URL` is `broker_url`; a typo among them is an error.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import the `tasks` module of every installed Django app, when the app first sends or the
# worker starts (Django is set up first, so a tasks module may import its models).
app.autodiscover_tasks()


@app.task(bind=True, ignore_result=True)
def debug_task(self) -> None:  # type: ignore[no-untyped-def]
    print(f"Request: {self.request!r}")
