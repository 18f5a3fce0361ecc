"""Deciding apart from acting: one Failure shape end to end, and a retry published as a
follow-up, after its RETRY record is stored and before its message is acknowledged."""

from __future__ import annotations

import asyncio

import pytest

from aiotq import App, TaskError
from aiotq.protocol import CODECS, Failure, ResultRecord, decode_record
from aiotq.testing import run_worker

from .conftest import async_wait_for


def test_a_failure_is_one_shape_from_exception_to_record_to_exception() -> None:
    try:
        raise KeyError("phone")
    except KeyError as exc:
        failure = Failure.of(exc)
    assert (failure.type, failure.module, failure.args) == ("KeyError", "builtins", ["phone"])
    record = ResultRecord(task_id="t", state="FAILURE", failure=failure)
    back = decode_record(CODECS["msgpack"].encode(record))
    rebuilt = back.exception()
    assert isinstance(rebuilt, KeyError) and rebuilt.args == ("phone",)
    assert "remote traceback" in rebuilt.__notes__[0] and "KeyError" in back.traceback  # type: ignore[operator]
    local = Failure(type="Nope", module="not.a.module", message="gone")
    assert isinstance(local.rebuild(), TaskError) and "not.a.module.Nope" in str(local.rebuild())


async def test_a_retry_that_cannot_be_published_is_dead_lettered_not_acked() -> None:
    app = App("decide", broker="memory://", backend="memory://")

    @app.task(name="decide.again", bind=True)
    async def again(self) -> None:  # type: ignore[no-untyped-def]
        raise self.retry(args=(object(),), countdown=0)  # its new message cannot be encoded

    async with run_worker(app):
        result = await again.send()
        await async_wait_for(lambda: app.broker._dead.get("default"), timeout=10)  # type: ignore[attr-defined]
        record = await result.refresh()
        assert record is not None and record.state == "RETRY"  # stored before the publish
    [(_, reason)] = await app.broker.dead_letters("default")
    assert "its follow-up failed" in reason and "cannot be sent as json" in reason


@pytest.mark.parametrize(("acks_late", "left"), [(False, 0), (True, 1)])
async def test_the_ack_policy_decides_whether_a_cold_stop_loses_the_task(
    acks_late: bool, left: int
) -> None:
    """acks_late=False acks on receipt, before the task runs: a task cut off by a cold stop
    is gone (at most once). The default acks after the result is stored: it comes back."""
    app = App("acks", broker="memory://", backend="memory://")
    running = asyncio.Event()

    @app.task(name="acks.long", acks_late=acks_late)
    async def long() -> None:
        running.set()
        await asyncio.sleep(30)

    async with run_worker(app) as worker:
        await long.send()
        await asyncio.wait_for(running.wait(), 5)
        worker.stop(cold=True)
    assert app.broker.pending_count("default") == left  # type: ignore[attr-defined]
