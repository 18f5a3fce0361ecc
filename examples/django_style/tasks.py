"""Plain sync code, as in a Django project: `app` configured from settings by namespace."""

import time

from aiotq import App

app = App("accounts")
app.config_from_object("examples.django_style.settings", namespace="AIOTQ")


@app.task
def send_activation_mail(user_id: int) -> str:
    time.sleep(0.05)  # a blocking SMTP call: sync tasks run in the worker's thread pool
    return f"activation mail for user {user_id}"


def register_user(user_id: int) -> str:
    """What a view does: queue the mail, here wait for it too (a view would not)."""
    result = send_activation_mail.delay(user_id)
    return result.get(timeout=30)
