"""Bad control input never hurts a worker: a malformed body is logged and skipped, an
unknown command or bad arguments get a one-line error as the reply, and the worker goes
on answering."""

from __future__ import annotations

import logging

import pytest

from aiotq import App
from aiotq.control import KEEP, TOPIC, TTL_S
from aiotq.testing import run_worker


async def test_malformed_unknown_and_badly_argued_commands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("ctl", broker="memory://", backend="memory://")

    @app.task(name="ctl.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with run_worker(app, hostname="ctl@here"):
        with caplog.at_level(logging.WARNING, logger="aiotq.worker"):
            await app.broker.post(TOPIC, b"\xff not json", keep=KEEP, ttl_s=TTL_S)
            unknown = await app.control.broadcast("explode", reply=True, timeout=2)
            bad = await app.control.broadcast(
                "rate_limit", {"task_name": "ctl.add", "rate_limit": "fast"}, reply=True
            )
            wrong = await app.control.broadcast("ping", {"nonsense": 1}, reply=True)
            assert await app.control.ping() == [{"ctl@here": {"ok": "pong"}}]
            assert await (await add.send(2, 3)).get(timeout=5) == 5
    assert unknown == [{"ctl@here": {"error": "unknown control command 'explode'"}}]
    assert "bad rate_limit 'fast'" in bad[0]["ctl@here"]["error"]
    assert wrong[0]["ctl@here"]["error"].startswith("TypeError:")
    assert "ignored a malformed control command" in caplog.text


def test_a_bad_rate_fails_at_the_caller() -> None:
    app = App("ctl", broker="memory://", backend="memory://")
    with pytest.raises(Exception, match="bad rate_limit 'often'"):
        app.control.rate_limit("ctl.add", "often")
    app.close()
