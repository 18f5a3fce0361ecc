"""Revoke inside a canvas, as in Celery: a revoked chain member stops the chain; a chord with
a revoked member fails with that error; a revoked group is revoked member by member."""

from __future__ import annotations

import pytest

from aiotq import App, TaskRevoked, chain, chord, group
from aiotq.testing import run_worker


def make_app() -> App:
    app = App("rv", broker="memory://", backend="memory://")

    @app.task(name="rv.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="rv.total")
    async def total(numbers: list[int]) -> int:
        return sum(numbers)

    return app


async def test_a_revoked_chain_member_stops_the_rest() -> None:
    app = make_app()
    add = app.tasks["rv.add"]
    async with run_worker(app):
        # due after the revoke below lands (a second of room): the worker then refuses it
        last = await chain(add.s(1, 1).set(countdown=1), add.s(10), add.s(100)).send()
        first = last.parent.parent
        await first.revoke()
        with pytest.raises(TaskRevoked):
            await last.get(timeout=5)  # the later results show the revoke at once
        with pytest.raises(TaskRevoked):
            await first.get(timeout=5)
        assert (await last.refresh()).state != "SUCCESS"


async def test_a_chord_with_a_revoked_member_fails_with_that_error() -> None:
    app = make_app()
    add, total = app.tasks["rv.add"], app.tasks["rv.total"]
    async with run_worker(app):
        members = [add.s(1, 1), add.s(2, 2).set(countdown=1)]  # refused when due
        body = await chord(members, total.s()).send()
        revoked_member = body.parent.results[1]
        await revoked_member.revoke()
        with pytest.raises(TaskRevoked, match="revoked"):
            await body.get(timeout=5)


async def test_revoking_a_group_revokes_each_member() -> None:
    app = make_app()
    add = app.tasks["rv.add"]
    async with run_worker(app):
        # never due in the test: the revoke turns each result REVOKED at once
        results = await group(add.s(n, n).set(countdown=30) for n in range(3)).send()
        await results.revoke()
        for result in results:
            with pytest.raises(TaskRevoked):
                await result.get(timeout=5)
        assert sorted((await app.control.inspect().revoked()).popitem()[1]) == sorted(
            r.id for r in results
        )
