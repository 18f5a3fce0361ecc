"""The producer side: send-time checks, options, routing, retry delays, direct calls."""

from __future__ import annotations

import pytest

from aiotq import App, ConfigurationError
from aiotq.routing import resolve_route
from aiotq.task import parse_rate


def make_app() -> App:
    return App("unit", broker="memory://")


def test_calling_a_task_runs_it_here_and_now() -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def whoami(self) -> bool:  # type: ignore[no-untyped-def]
        return self.request.called_directly

    assert add(2, 3) == 5
    assert whoami() is True
    assert add.name == "tests.test_tasks.test_calling_a_task_runs_it_here_and_now.<locals>.add"


async def test_wrong_arguments_fail_in_the_producer() -> None:
    app = make_app()

    @app.task
    async def send_sms(phone: str, text: str) -> str:
        return phone

    with pytest.raises(TypeError, match="missing a required argument: 'text'"):
        await send_sms.send("+1555")
    with pytest.raises(TypeError, match="unexpected keyword argument 'body'"):
        await send_sms.send("+1555", "hi", body="x")
    assert app.broker.pending_count("default") == 0  # type: ignore[attr-defined]


async def test_positional_calls_are_checked_as_the_signature_says() -> None:
    """The positional-only fast path accepts exactly what the signature binds."""
    app = make_app()

    @app.task
    async def notify(phone: str, text: str = "hi") -> None: ...

    @app.task(bind=True)
    async def bound(self: object, phone: str) -> None: ...

    await notify.send("+1555")
    await notify.send("+1555", "hello")
    await bound.send("+1555")
    with pytest.raises(TypeError, match="too many positional arguments"):
        await notify.send("+1555", "hello", "extra")
    with pytest.raises(TypeError, match="missing a required argument: 'phone'"):
        await notify.send()
    with pytest.raises(TypeError, match="too many positional arguments"):
        await bound.send("+1555", "extra")
    with pytest.raises(TypeError, match="missing a required argument: 'phone'"):
        await bound.send()
    assert app.broker.pending_count("default") == 3  # type: ignore[attr-defined]


async def test_unencodable_argument_is_named() -> None:
    app = make_app()

    @app.task
    async def store(blob: object, meta: object = None) -> None: ...

    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"keyword argument 'meta' of .*store \(Opaque\)"):
        await store.send(1, meta=Opaque())
    with pytest.raises(TypeError, match=r"argument 0 .*\(object\) cannot be sent as json"):
        await store.send(object())


async def test_unknown_send_option_is_an_error() -> None:
    app = make_app()

    @app.task
    async def noop() -> None: ...

    with pytest.raises(TypeError, match="countdwn"):
        await noop.aapply_async(countdwn=3)


def test_task_options_are_validated() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="async tasks run inline"):

        @app.task(executor="process")
        async def bad() -> None: ...

    with pytest.raises(ConfigurationError, match="block the loop"):

        @app.task(executor="inline")
        def bad_sync() -> None: ...

    with pytest.raises(ConfigurationError, match="rate_limit"):

        @app.task(rate_limit="fast")
        async def bad_rate() -> None: ...


def test_parse_rate() -> None:
    assert parse_rate("100/s") == 100
    assert parse_rate("10/m") == pytest.approx(10 / 60)
    assert parse_rate("36/h") == pytest.approx(0.01)
    assert parse_rate(None) is None


def test_retry_delay_fixed_and_backoff() -> None:
    app = make_app()

    @app.task(default_retry_delay=3)
    async def fixed() -> None: ...

    @app.task(retry_backoff=2, retry_backoff_max=50, retry_jitter=False)
    async def backoff() -> None: ...

    @app.task(retry_backoff=True, retry_jitter=True)
    async def jittered() -> None: ...

    assert fixed.retry_delay_s(0) == 3
    assert [backoff.retry_delay_s(n) for n in range(6)] == [2, 4, 8, 16, 32, 50]
    assert all(0 <= jittered.retry_delay_s(3) <= 8 for _ in range(50))


def test_routes_exact_glob_callable_and_precedence() -> None:
    routes = [
        {"proj.tasks.mul": {"queue": "feed_task", "routing_key": "mul.feed"}, "proj.sms.*": "sms"},
        lambda name, args, kwargs, options: {"queue": "big"} if args and args[0] > 100 else None,
    ]
    assert resolve_route(routes, "proj.tasks.mul", (), {}) == {
        "queue": "feed_task",
        "routing_key": "mul.feed",
    }
    assert resolve_route(routes, "proj.sms.send", (), {}) == {"queue": "sms"}
    assert resolve_route(routes, "proj.tasks.add", (101,), {}) == {"queue": "big"}
    assert resolve_route(routes, "proj.tasks.add", (1,), {}) == {}


async def test_send_routes_by_setting_and_call_options_win() -> None:
    app = App("r", broker="memory://", task_routes={"r.*": {"queue": "routed"}})

    @app.task(name="r.mul")
    async def mul(x: int, y: int) -> int:
        return x * y

    await mul.send(1, 2)
    await mul.aapply_async((1, 2), queue="explicit")
    broker = app.broker
    assert broker.pending_count("routed") == 1  # type: ignore[attr-defined]
    assert broker.pending_count("explicit") == 1  # type: ignore[attr-defined]


def test_sync_delay_works_without_a_running_loop() -> None:
    app = make_app()

    @app.task
    async def ping() -> str:
        return "pong"

    result = ping.delay()
    assert result.id
    assert app.broker.pending_count("default") == 1  # type: ignore[attr-defined]
    assert result.state == "PENDING"
    app.close()
