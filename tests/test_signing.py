"""task_signing_key: HMAC-SHA256 over each message's body, checked by the worker before
decoding; unsigned or forged messages are dead-lettered with the reason, never run."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from aiotq import App, ConfigurationError
from aiotq.producer import SIGNATURE_HEADER
from aiotq.testing import run_worker

SECRET = "k3y-never-shown"
OLD, NEW = "old-key-never-shown", "new-key-never-shown"


def _app(broker: str, key: Any, ran: list[Any], backend: str | None = None) -> App:
    app = App("signing", broker=broker, backend=backend)
    app.conf.task_signing_key = key

    @app.task(name="signing.add")
    async def add(x: int, y: int) -> int:
        ran.append((x, y))
        return x + y

    return app


async def _dead(app: App, count: int, timeout: float = 10.0) -> list[str]:
    """The dead letters' reasons, once there are `count` (fails past the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        dead = await app.broker.dead_letters("default")
        if len(dead) >= count or time.monotonic() > deadline:
            assert len(dead) >= count, f"{len(dead)} dead letters, {count} expected"
            return [reason for _, reason in dead]
        await asyncio.sleep(0.01)


def _no_key_in(text: str, *keys: str) -> None:
    for key in keys:
        assert key not in text


async def test_signed_send_runs_and_the_header_is_the_body_hmac() -> None:
    ran: list[Any] = []
    app = _app("memory://", SECRET, ran)
    async with run_worker(app):
        assert await (await app.asend_task("signing.add", (1, 2))).get(timeout=5) == 3
    assert ran == [(1, 2)]


async def test_unsigned_and_forged_messages_are_dead_lettered_never_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ran: list[Any] = []
    app = _app("memory://", SECRET, ran)
    async with run_worker(app):
        # a genuine signed message, captured to replay with tampered parts
        sent: list[tuple[bytes, dict[str, str]]] = []
        publish = app.broker.publish

        async def capture(queue: str, body: bytes, headers: Any, **kw: Any) -> None:
            sent.append((body, dict(headers)))

        app.broker.publish = capture  # type: ignore[method-assign]
        await app.asend_task("signing.add", (5, 5))
        app.broker.publish = publish  # type: ignore[method-assign]
        [(body, headers)] = sent
        assert SIGNATURE_HEADER in headers
        unsigned = {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}
        await app.broker.publish("default", body, unsigned)
        await app.broker.publish("default", body, {**headers, SIGNATURE_HEADER: "0" * 64})
        await app.broker.publish("default", body.replace(b"5", b"6"), headers)  # body changed
        reasons = await _dead(app, 3)
        # the worker lives: a later signed task runs
        assert await (await app.asend_task("signing.add", (1, 1))).get(timeout=5) == 2
    assert sorted(reasons) == sorted(
        ["unsigned message refused (task_signing_key is set)"] + ["bad signature: refused"] * 2
    )
    assert ran == [(1, 1)]
    _no_key_in(caplog.text + " ".join(reasons), SECRET)
    assert "bad signature: refused" in caplog.text


async def _cross(
    redis_url: str, producer_key: Any, worker_key: Any, caplog: pytest.LogCaptureFixture
) -> tuple[list[Any], list[str]]:
    """Send one task from an app with `producer_key` to a worker with `worker_key`."""
    caplog.set_level(logging.DEBUG)
    ran: list[Any] = []
    worker_app = _app(redis_url, worker_key, ran, backend=redis_url)
    producer = _app(redis_url, producer_key, [], backend=redis_url)
    reasons: list[str] = []
    try:
        async with run_worker(worker_app):
            result = await producer.asend_task("signing.add", (2, 3))
            try:
                assert await result.get(timeout=2) == 5
            except TimeoutError:
                reasons = await _dead(worker_app, 1)
    finally:
        await producer.aclose()
        await worker_app.aclose()
    text = caplog.text + " ".join(reasons)
    for key in (producer_key, worker_key):
        _no_key_in(text, *([key] if isinstance(key, str) else key or []))
    return ran, reasons


async def test_wrong_key_is_refused(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    ran, reasons = await _cross(redis_url, "other-key-never-shown", SECRET, caplog)
    assert ran == [] and reasons == ["bad signature: refused"]


async def test_unsigned_producer_is_refused(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran, reasons = await _cross(redis_url, None, SECRET, caplog)
    assert ran == [] and reasons == ["unsigned message refused (task_signing_key is set)"]


@pytest.mark.parametrize(
    ("producer_key", "worker_key", "runs"),
    [
        (OLD, [NEW, OLD], True),  # rotation under way: old producers still accepted
        (NEW, [NEW, OLD], True),
        ([NEW, OLD], [NEW], True),  # the first key signs
        (OLD, [NEW], False),  # rotation done: the old key is refused
    ],
)
async def test_rotation(
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    producer_key: Any,
    worker_key: Any,
    runs: bool,
) -> None:
    ran, reasons = await _cross(redis_url, producer_key, worker_key, caplog)
    assert (ran == [(2, 3)]) is runs
    assert reasons == ([] if runs else ["bad signature: refused"])


def test_setting_is_checked_and_never_shows_a_key() -> None:
    app = App("s", broker="memory://")
    app.conf.task_signing_key = [NEW, OLD]
    shown = repr(app.conf.task_signing_key) + repr(app.conf.settings)
    _no_key_in(shown, NEW, OLD)
    for bad in ("", [], [NEW, ""], 5, [NEW, 3]):
        with pytest.raises(ConfigurationError, match="task_signing_key") as info:
            app.conf.task_signing_key = bad
        _no_key_in(str(info.value), NEW)
    app.conf.task_signing_key = None
    assert app.conf.task_signing_key is None


@pytest.mark.parametrize("kind", ["sqlite", "redis", "amqp"])
async def test_signed_sends_run_on_every_broker(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    """The signature travels in a header, which each broker carries its own way (AMQP
    headers, a stream field, a row): one signed send and one signed send_many."""
    backend = None
    if kind == "sqlite":
        broker = f"sqlite:///{tmp_path}/signed.db"
    elif kind == "redis":
        broker = request.getfixturevalue("redis_url")
    else:
        broker, backend = request.getfixturevalue("amqp_url"), request.getfixturevalue("redis_url")
    ran: list[Any] = []
    app = _app(broker, SECRET, ran, backend=backend)
    async with run_worker(app):
        add = app.tasks["signing.add"]
        assert await (await add.send(1, 2)).get(timeout=10) == 3
        handles = await add.send_many([((i, i), {}) for i in range(3)])
        assert [await h.get(timeout=10) for h in handles] == [0, 2, 4]
    await app.aclose()
