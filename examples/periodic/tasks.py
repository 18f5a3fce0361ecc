"""The tutorial's beat schedule: `mul` every 30 seconds, plus a crontab entry and a decorated
periodic task. Run the worker with beat: `aiotq worker examples.periodic.tasks:app -B`."""

import os
from datetime import timedelta

from aiotq import App, crontab, get_task_logger

app = App("periodic", timezone="Europe/Paris")  # crontab hours are Paris wall-clock hours
logger = get_task_logger(__name__)
EVERY_S = float(os.environ.get("PERIODIC_EVERY_S", "30"))  # the test shortens it


@app.task
def mul(x: int, y: int) -> int:
    return x * y


app.conf.beat_schedule = {
    "mul-every-30-seconds": {
        "task": "examples.periodic.tasks.mul",
        "schedule": EVERY_S,
        "args": (16, 16),
    },
    "mul-on-weekday-mornings": {
        "task": "examples.periodic.tasks.mul",
        "schedule": crontab(minute=30, hour=7, day_of_week="mon-fri"),
        "args": (2, 3),
    },
}


@app.periodic(every=timedelta(seconds=EVERY_S))
async def heartbeat() -> str:
    logger.info("still here")
    return "ok"
