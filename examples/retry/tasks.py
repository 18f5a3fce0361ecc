"""The tutorial's div: bind=True, a task logger showing self.request, retry every 3 s."""

from aiotq import App, get_task_logger

app = App("proj")
logger = get_task_logger(__name__)


@app.task(bind=True)
def div(self, x: float, y: float) -> float:  # type: ignore[no-untyped-def]
    logger.info(
        f"""
        Executing task : {self.request.id}
        task.args      : {self.request.args!r}
        task.kwargs    : {self.request.kwargs!r}
        """
    )
    try:
        return x / y
    except ZeroDivisionError as e:
        raise self.retry(exc=e, countdown=3, max_retries=3) from None
