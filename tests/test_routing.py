"""Celery-style routing (task_queues, exchanges, routing keys), the same on every broker."""

from __future__ import annotations

import pytest

from aiotq import App, ConfigurationError, Exchange, Queue, Worker
from aiotq.routing import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("task.#", "task.foooooooo", True),
        ("task.#", "task", True),  # '#' is zero or more words
        ("task.#", "task.a.b.c", True),
        ("task.#", "mul.feed", False),
        ("*.feed", "mul.feed", True),
        ("*.feed", "feed", False),  # '*' is exactly one word
        ("*.feed", "a.b.feed", False),
        ("#.feed", "a.b.feed", True),
        ("#", "anything.at.all", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("task.#", "task.#", True),  # a binding key used as a routing key (Celery does this)
        ("*.feed", "*.feed", True),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def seed_settings() -> dict[str, object]:
    """The tutorial's celeryconfig.py for projb, as written there (uppercase names, a set)."""
    return {
        "CELERY_QUEUES": {
            Queue("foo", routing_key="task.#"),
            Queue("feed_task", routing_key="*.feed"),
        },
        "CELERY_DEFAULT_QUEUE": "foo",
        "CELERY_DEFAULT_EXCHANGE": "tasks",
        "CELERY_DEFAULT_EXCHANGE_TYPE": "topic",
        "CELERY_DEFAULT_ROUTING_KEY": "task.foooooooo",
        "CELERY_ROUTES": {"projb.tasks.mul": {"queue": "feed_task", "routing_key": "mul.feed"}},
    }


def seed_app() -> App:
    """The tutorial's projb: a topic exchange `tasks`, queues foo (task.#) and feed_task
    (*.feed), default queue foo, default routing key task.foooooooo, mul routed to feed_task."""
    app = App("projb", broker="memory://")
    app.config_from_object(seed_settings())

    @app.task(name="projb.tasks.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="projb.tasks.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    return app


def pending(app: App, queue: str) -> int:
    return int(app.broker.pending_count(queue))  # type: ignore[attr-defined]


def test_seed_topic_routing() -> None:
    app = seed_app()
    add, mul = app.tasks["projb.tasks.add"], app.tasks["projb.tasks.mul"]
    add.delay(3, 3)  # default queue foo
    assert (pending(app, "foo"), pending(app, "feed_task")) == (1, 0)
    mul.delay(3, 3)  # the route: feed_task with key mul.feed
    assert (pending(app, "foo"), pending(app, "feed_task")) == (1, 1)
    add.apply_async((3, 3), queue="feed_task", routing_key="mul.feed")  # per call wins
    mul.apply_async((3, 3), queue="foo", routing_key="task.foooooo")
    assert (pending(app, "foo"), pending(app, "feed_task")) == (2, 2)
    assert Worker(app).queues == ["feed_task", "foo"]  # no -Q: every declared queue
    app.close()


def test_a_routing_key_that_reaches_no_queue_fails_at_send() -> None:
    app = seed_app()
    with pytest.raises(
        ValueError, match=r"routing key 'nowhere' reaches no queue of topic exchange 'tasks'"
    ):
        app.tasks["projb.tasks.add"].apply_async((1, 1), queue="foo", routing_key="nowhere")
    app.close()


def test_fanout_delivers_to_every_bound_queue_and_direct_to_one() -> None:
    app = App("fan", broker="memory://")
    broadcast = Exchange("broadcast", type="fanout")
    app.conf.task_queues = [
        Queue("node-a", broadcast),
        Queue("node-b", broadcast),
        Queue("images", Exchange("media", "direct"), routing_key="image"),
        Queue("videos", Exchange("media", "direct"), routing_key="video"),
    ]

    @app.task
    def refresh() -> None: ...

    refresh.apply_async(exchange="broadcast")
    assert (pending(app, "node-a"), pending(app, "node-b")) == (1, 1)
    refresh.apply_async(exchange="media", routing_key="video")
    assert (pending(app, "images"), pending(app, "videos")) == (0, 1)
    refresh.apply_async(queue="undeclared")  # not declared: reached by its name
    assert pending(app, "undeclared") == 1
    app.close()


def test_bad_topology_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="type 'headers' is not one of"):
        Exchange("x", type="headers")
    app = App("bad", broker="memory://", task_queues=["not-a-queue"])
    with pytest.raises(ConfigurationError, match="task_queues holds Queue"):
        app.finalize()
