"""The tutorial's projb routing: a topic exchange `tasks` with queues `foo` (task.#) and
`feed_task` (*.feed); `mul` is routed to feed_task. The same settings deliver to the same
queues on RabbitMQ (AIOTQ_BROKER_URL=amqp://...), Redis, or the default SQLite file."""

from aiotq import App, Queue

app = App("projb")
app.config_from_object(
    {
        "CELERY_QUEUES": (
            Queue("foo", routing_key="task.#"),  # routing keys starting with task.
            Queue("feed_task", routing_key="*.feed"),  # routing keys ending in .feed
        ),
        "CELERY_DEFAULT_QUEUE": "foo",
        "CELERY_DEFAULT_EXCHANGE": "tasks",
        "CELERY_DEFAULT_EXCHANGE_TYPE": "topic",
        "CELERY_DEFAULT_ROUTING_KEY": "task.foooooooo",
        "CELERY_ROUTES": {
            "examples.routing.tasks.mul": {"queue": "feed_task", "routing_key": "mul.feed"}
        },
    }
)


@app.task(bind=True)
def add(self, x: int, y: int) -> str:  # type: ignore[no-untyped-def]
    return f"add({x}, {y}) = {x + y} from queue {self.request.delivery_info['queue']}"


@app.task(bind=True)
def mul(self, x: int, y: int) -> str:  # type: ignore[no-untyped-def]
    return f"mul({x}, {y}) = {x * y} from queue {self.request.delivery_info['queue']}"
