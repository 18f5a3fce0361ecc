"""python -m examples.django_style: sync callers, `.delay()` and `.get()`, no asyncio in sight."""

from examples._worker import worker_process
from examples.django_style.tasks import app, register_user, send_activation_mail

if __name__ == "__main__":
    with worker_process("examples.django_style.tasks:app", "-Q", "accounts"):
        print(register_user(1))
        results = [send_activation_mail.delay(user_id) for user_id in range(2, 12)]
        print(f"{len([r.get(timeout=30) for r in results])} more mails sent")
        print(f"routed to queue: {app.conf.task_routes}")
    app.close()
