from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from proj.celery import app

from .models import Order
from .tasks import count_orders as count_orders_task
from .tasks import process_order


@csrf_exempt  # a JSON endpoint for curl; keep CSRF on for your forms
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Create a row and queue its processing once the row is committed: a task sent with
    `.delay()` inside the transaction could run before the commit and not find the row,
    and one sent from a transaction that rolls back is never sent at all."""
    with transaction.atomic():
        order = Order.objects.create(item=request.POST.get("item", "book"))
        process_order.delay_on_commit(order.pk)
    return JsonResponse({"order": order.pk, "status": order.status}, status=201)


@require_GET
def order_detail(request: HttpRequest, order_id: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=order_id)
    return JsonResponse({"order": order.pk, "item": order.item, "status": order.status})


@require_GET
def count_orders(request: HttpRequest) -> JsonResponse:
    """Send at once with `.delay()` and answer with the task id (no waiting in a view)."""
    result = count_orders_task.delay()
    return JsonResponse({"task_id": result.id}, status=202)


@require_GET
def task_status(request: HttpRequest, task_id: str) -> JsonResponse:
    """A task's state, and its result once it is ready."""
    result = app.AsyncResult(task_id)
    body = {"task_id": task_id, "state": result.state}
    if result.ready():
        body["result"] = result.result if result.successful() else repr(result.result)
    return JsonResponse(body)
