"""Deciding apart from acting: one Failure shape end to end, and a retry published as a
follow-up, after its RETRY record is stored and before its message is acknowledged."""

from __future__ import annotations

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


async def test_acks_late_false_acks_on_receipt_before_the_task_runs() -> None:
    app = App("early", broker="memory://", backend="memory://")
    seen: list[int] = []

    @app.task(name="early.look", acks_late=False)
    async def look() -> int:
        seen.append(len(app.broker._unacked))  # type: ignore[attr-defined]
        return 1

    async with run_worker(app):
        assert await (await look.send()).get(timeout=5) == 1
    assert seen == [0]  # already acknowledged while it ran


async def test_a_late_ack_happens_after_the_result_is_stored() -> None:
    app = App("late", broker="memory://", backend="memory://")
    seen: list[int] = []

    @app.task(name="late.look")
    async def look() -> int:
        seen.append(len(app.broker._unacked))  # type: ignore[attr-defined]
        return 2

    async with run_worker(app):
        assert await (await look.send()).get(timeout=5) == 2
    assert seen == [1]  # still unacknowledged while it ran
