"""The demo app's tasks: found by `app.autodiscover_tasks()` in proj/celery.py. They import
the app's models at the top, which works in the worker because Django is set up first."""

from django.utils import timezone

from aiotq import shared_task

from .models import Order


@shared_task
def process_order(order_id: int) -> str:
    """Sync code using the ORM: it runs in the worker's thread pool."""
    order = Order.objects.get(pk=order_id)  # sent after commit: the row is there
    order.status = "processed"
    order.processed_at = timezone.now()
    order.save(update_fields=["status", "processed_at"])
    return str(order)


@shared_task
def count_orders() -> int:
    return Order.objects.count()


@shared_task
def connection_was_open() -> bool:
    """Whether this thread's database connection was still open when the task began (the
    worker closes stale ones around each task, as Celery's Django fixup does)."""
    from django.db import connection

    was_open = connection.connection is not None
    Order.objects.exists()  # opens it (a task that uses the ORM)
    return was_open
