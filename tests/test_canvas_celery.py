"""Celery's own canvas integration tests (celery/celery t/integration/test_canvas.py), ported:
nested chains, groups and chords give the values Celery gives, `.parent` links follow the
nesting, callbacks and error callbacks run where Celery runs them, and a chord that cannot
complete fails instead of hanging. On memory and Redis, each with a real in-process worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiotq import App, GroupResult, chain, chord, group
from aiotq.testing import run_worker

from .conftest import async_wait_for

T = 10  # seconds; every wait below has this deadline


def build(url: str) -> App:
    app = App("canvas-celery", broker=url)
    seen: list[Any] = []
    app.seen = seen  # type: ignore[attr-defined]  # what the echo task saw, in order

    @app.task(name="t.identity")
    async def identity(x: Any) -> Any:
        return x

    @app.task(name="t.add")
    async def add(x: Any, y: Any, z: Any = None) -> Any:
        return x + y if z is None else x + y + z

    @app.task(name="t.tsum")
    async def tsum(numbers: list[Any]) -> Any:
        return sum(numbers)

    @app.task(name="t.add_to_all")
    async def add_to_all(values: list[list[Any]], extra: list[Any]) -> list[list[Any]]:
        return [value + extra for value in values]

    @app.task(name="t.fail")
    async def fail(*args: Any) -> None:
        raise ValueError(f"failed on purpose with {list(args)}")

    @app.task(name="t.echo")
    async def echo(message: Any, *ignored: Any) -> Any:
        seen.append(message)
        return message

    return app


@pytest.fixture(params=["memory", "redis"])
async def app(request: pytest.FixtureRequest) -> AsyncIterator[App]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    app = build(url)
    async with run_worker(app, concurrency=20):
        yield app
    await app.aclose()


def t(app: App, name: str) -> Any:
    return app.tasks[f"t.{name}"]


async def seen(app: App, count: int) -> list[Any]:
    """What the echo task has seen, once it has seen `count` messages."""
    got: list[Any] = app.seen  # type: ignore[attr-defined]
    await async_wait_for(lambda: True if len(got) >= count else None, timeout=T)
    return list(got)


# -- chains ----------------------------------------------------------------------------------
async def test_chain_of_chords_with_two_tasks(app: App) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    c = add.si(1, 0) | group(add.s(1), add.s(1)) | tsum.s() | add.s(1)
    c = c | chord(group(add.s(1), add.s(1)), tsum.s())
    assert await (await c.send()).get(timeout=T) == 12


async def test_chain_of_explicit_chords(app: App) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    c1 = chain(
        chord(group(add.si(1, 0), add.si(1, 0)), tsum.s()),
        chord(group(add.s(1), add.s(1)), tsum.s()),
        chord(group(add.s(0), add.s(0)), tsum.s()),
    )
    c2 = chain(
        chord(group(add.s(10), add.s(10)), tsum.s()),
        chord(group(add.s(0), add.s(0)), tsum.s()),
        chord(group(add.s(1), add.s(1)), tsum.s()),
    )
    assert await (await (c1 | c2).send()).get(timeout=T) == 178


async def test_nested_chain_group_mid_and_last(app: App) -> None:
    identity = t(app, "identity")
    mid = chain(identity.s(42), group(identity.s(), identity.s()), identity.s())
    assert await (await mid.send()).get(timeout=T) == [42, 42]
    last = chain(identity.s(42), group(identity.s(), identity.s()))
    assert await (await last.send()).get(timeout=T) == [42, 42]


async def test_group_chord_group_chain_runs_in_order(app: App) -> None:
    echo = t(app, "echo")
    before = group(echo.si(f"before {i}") for i in range(3))
    after = group(echo.si(f"after {i}") for i in range(2))
    result = await (before | echo.si("connect") | after).send()
    await result.get(timeout=T)
    order = await seen(app, 6)
    assert set(order[:3]) == {"before 0", "before 1", "before 2"}
    assert order[3] == "connect" and set(order[4:]) == {"after 0", "after 1"}


async def test_group_in_center_of_chain_inside_chords(app: App) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    t1 = chain(tsum.s(), group(add.s(8), add.s(16)), tsum.s() | add.s(32))
    t2 = chord([tsum.s(), tsum.s()], t1)
    t3 = chord([add.s(0, 1)], t2)
    assert await (await t3.send()).get(timeout=T) == 60


async def test_parent_links_follow_groups_and_chords() -> None:
    app = build("memory://")
    add = t(app, "add")
    a, b, c, d = add.s(1, 1), add.s(1), add.s(1), add.s(1)
    inner = group(add.s(1), add.s(2))
    tail = (a | b | inner | c | d).freeze()
    assert tail.parent.id == c.options["task_id"]
    assert isinstance(tail.parent.parent, GroupResult)
    assert tail.parent.parent.id == inner.options["group_id"]
    assert tail.parent.parent.parent.id == b.options["task_id"]
    assert tail.parent.parent.parent.parent.id == a.options["task_id"]


# -- groups ----------------------------------------------------------------------------------
async def test_nested_groups_are_unrolled(app: App) -> None:
    identity = t(app, "identity")
    sig = group(identity.s(1), group(identity.s(2), group(identity.s(3), identity.s(4))))
    assert len(sig.tasks) == 4
    assert await (await sig.send()).get(timeout=T) == [1, 2, 3, 4]
    assert await (await group(group(identity.s(42), identity.s(42))).send()).get(timeout=T) == [
        42,
        42,
    ]


async def test_chain_ending_in_a_group_inside_a_group_keeps_its_list(app: App) -> None:
    identity = t(app, "identity")
    sig = group(
        identity.si(1), identity.si(2), chain(identity.si(5), group(identity.si(3), identity.si(4)))
    )
    assert await (await sig.send()).get(timeout=T) == [1, 2, [3, 4]]


async def test_nested_group_chord_counting(app: App) -> None:
    identity = t(app, "identity")
    simple = group((chord((identity.si(42),), identity.s()),))
    assert await (await simple.send()).get(timeout=T) == [[42]]
    of_chain = group((chord((chain((identity.si(1337),) * 5),), identity.s()),))
    assert await (await of_chain.send()).get(timeout=T) == [[1337]]
    of_group = group((chord((group((identity.si(1337),) * 6),), identity.s()),))
    assert await (await of_group.send()).get(timeout=T) == [[1337] * 6]
    of_chord = group((chord((chord((identity.si(1337),) * 4, identity.si(31337)),), identity.s()),))
    assert await (await of_chord.send()).get(timeout=T) == [[31337]]


async def test_group_link_runs_once_and_errback_per_failure(app: App) -> None:
    identity, echo, fail = t(app, "identity"), t(app, "echo"), t(app, "fail")
    linked = group(identity.si(42), identity.si(1337))
    linked.link(echo.si("called back"))
    assert await (await linked.send()).get(timeout=T) == [42, 1337]
    assert await seen(app, 1) == ["called back"]
    failing = group(fail.si(), identity.si(1), fail.si())
    failing.link_error(echo.si("errback"))
    result = await failing.send()
    with pytest.raises(ValueError, match="on purpose"):
        await result.get(timeout=T)
    assert (await seen(app, 3)).count("errback") == 2


async def test_group_and_canvas_called_directly_send(app: App) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")

    def sync_calls() -> list[Any]:
        return [
            group(add.s(2), add.s(4))(10).get(timeout=T),
            chain(add.s(1, 1), add.s(2))().get(timeout=T),
            (add.s(1, 1) | add.s(3))().get(timeout=T),
            chord([add.s(1, 1), add.s(2, 2)], tsum.s())().get(timeout=T),
            chord([add.s(1, 1), add.s(2, 2)])(tsum.s()).get(timeout=T),
        ]

    assert await asyncio.to_thread(sync_calls) == [[12, 14], 4, 5, 6, 6]
    await asyncio.to_thread(app.close)  # the sync calls' portal and its connections
    assert await add.s(2)(3) == 5  # a task's signature called runs the function here, as in Celery


# -- chords ----------------------------------------------------------------------------------
async def test_nested_chords_and_chains_of_chords(app: App) -> None:
    add, add_to_all = t(app, "add"), t(app, "add_to_all")
    c1 = chord(
        [chord([add.s(1, 2), add.s(3, 4)], add.s([5])), chord([add.s(6, 7)], add.s([10]))],
        add_to_all.s(["A"]),
    )
    assert await (await c1.send()).get(timeout=T) == [[3, 7, 5, "A"], [13, 10, "A"]]
    c2 = group(
        [group([add.s(1, 2), add.s(3, 4)]) | add.s([5]), group([add.s(6, 7)]) | add.s([10])]
    ) | add_to_all.s(["A"])
    assert await (await c2.send()).get(timeout=T) == [[3, 7, 5, "A"], [13, 10, "A"]]
    deep = group(
        [group([group([group([add.s(1, 2)]) | add.s([3])]) | add.s([4])]) | add.s([5])]
    ) | add.s([6])
    assert await (await deep.send()).get(timeout=T) == [[[[3, 3], 4], 5], 6]


async def test_chord_of_chains_of_chords(app: App) -> None:
    add = t(app, "add")
    inner = chain(add.si(1, 2), chord(group([add.si(1, 2), add.si(1, 2)]), add.si(1, 2)))
    c = chord(group([inner, inner.clone()]), add.si(2, 2))
    assert await (await c.send()).get(timeout=T) == 4
    identity = t(app, "identity")
    c = chain(
        identity.si(1),
        chord(
            [
                identity.si(2),
                chain(identity.si(3), chord([identity.si(4), identity.si(5)], identity.si(6))),
            ],
            identity.si(7),
        ),
    )
    assert await (await c.send()).get(timeout=T) == 7
    values = chord(
        [chain(add.si(1, 1), chord([add.s(1), add.s(2)], t(app, "tsum").s()))], identity.s()
    )
    assert await (await values.send()).get(timeout=T) == [7]  # (2+1) + (2+2)


async def test_chain_ending_in_a_group_inside_a_chord_header(app: App) -> None:
    identity = t(app, "identity")
    sig = chord(group(chain(identity.s(42), group(identity.s(), identity.s()))), identity.s())
    assert await (await sig.send()).get(timeout=T) == [[42, 42]]
    two = chord(
        [chain(identity.si(1), group(identity.s(), identity.s())), identity.si(9)], identity.s()
    )
    assert await (await two.send()).get(timeout=T) == [[1, 1], 9]


async def test_group_inside_a_chord_header_is_unrolled(app: App) -> None:
    identity = t(app, "identity")
    sig = chord((group(identity.s(42), identity.s(42)),), identity.s())
    assert await (await sig.send()).get(timeout=T) == [42, 42]


async def test_empty_header_and_single_task_header(app: App) -> None:
    add, tsum = t(app, "add"), t(app, "tsum")
    assert await (await chord([], tsum.s()).send()).get(timeout=T) == 0
    assert await (await chord(add.s(5, 7), tsum.s()).send()).get(timeout=T) == 12


# -- errors ----------------------------------------------------------------------------------
async def test_chord_link_error_runs_once_for_a_header_failure_and_for_a_body_failure(
    app: App,
) -> None:
    identity, fail, echo = t(app, "identity"), t(app, "fail"), t(app, "echo")
    header_fails = chord([identity.si(1), fail.si(), fail.si()], identity.s())
    header_fails.link_error(echo.s())
    result = await header_fails.send()
    with pytest.raises(ValueError, match="on purpose"):
        await result.get(timeout=T)
    body_fails = chord([identity.si(1), identity.si(2)], fail.s())
    body_fails.link_error(echo.s())
    result = await body_fails.send()
    with pytest.raises(ValueError, match=r"on purpose with \[\[1, 2\]\]"):
        await result.get(timeout=T)
    errbacks = await seen(app, 2)
    assert len(errbacks) == 2  # once each, the failed task's id first


async def test_set_link_and_link_error_on_a_chain_step_and_a_chord_body(app: App) -> None:
    add, echo, fail, tsum = t(app, "add"), t(app, "echo"), t(app, "fail"), t(app, "tsum")
    step = add.s(1).set(link=echo.s())
    assert await (await (add.s(1, 1) | step).send()).get(timeout=T) == 3
    body = fail.s().set(link_error=echo.si("body failed"))
    result = await chord([add.s(1, 1)], body).send()
    with pytest.raises(ValueError):
        await result.get(timeout=T)
    assert sorted(map(str, await seen(app, 2))) == ["3", "body failed"]
    linked = chord([add.s(1, 1), add.s(2, 2)], tsum.s())
    linked.link(echo.s())
    assert await (await linked.send()).get(timeout=T) == 6
    assert 6 in await seen(app, 3)


async def test_error_in_a_nested_chain_fails_the_outer_chord_instead_of_hanging(app: App) -> None:
    add, fail, identity = t(app, "add"), t(app, "fail"), t(app, "identity")
    member = chain(add.si(1, 1), fail.s(), add.s(1))  # fails in the middle
    c = chord([member, add.si(2, 2)], identity.s())
    with pytest.raises(ValueError, match=r"on purpose with \[2\]"):
        await (await c.send()).get(timeout=T)
    inner_chord_fails = chord(
        [chain(add.si(1, 1), chord([fail.s(), add.s(1)], identity.s()))], identity.s()
    )
    with pytest.raises(ValueError, match="on purpose"):
        await (await inner_chord_fails.send()).get(timeout=T)
    grouped = chord([chain(add.si(1, 1), group(fail.s(), add.s(1)))], identity.s())
    with pytest.raises(ValueError, match="on purpose"):
        await (await grouped.send()).get(timeout=T)


async def test_a_chord_member_of_an_unknown_task_fails_the_chord(app: App) -> None:
    identity = t(app, "identity")
    c = chord([identity.si(1), app.signature("t.not_registered")], identity.s())
    with pytest.raises(Exception, match="not_registered"):
        await (await c.send()).get(timeout=T)


# -- map, starmap, chunks, replace ------------------------------------------------------------
async def test_map_starmap_and_chunks(app: App) -> None:
    add, identity = t(app, "add"), t(app, "identity")
    assert await (await identity.map([1, 2, 3]).send()).get(timeout=T) == [1, 2, 3]
    assert await (await add.starmap([(1, 2), (3, 4)]).send()).get(timeout=T) == [3, 7]
    pairs = list(zip(range(10), range(10), strict=True))
    parts = add.chunks(pairs, 4)
    assert len(parts.group().tasks) == 3
    assert await (await parts.send()).get(timeout=T) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    with pytest.raises(ValueError, match="chunk size"):
        add.chunks(pairs, 0)
    listed = await app.control.inspect(timeout=5).registered()
    assert listed and all(not n.startswith("celery.") for names in listed.values() for n in names)
    assert "celery.map" in app.tasks  # registered on every app, left out of listings as in Celery


def build_replacing(app: App) -> None:
    identity, add = t(app, "identity"), t(app, "add")

    @app.task(name="t.replace_with_chain", bind=True)
    async def replace_with_chain(self: Any, value: Any) -> None:
        raise self.replace(identity.si(value) | add.s(1))

    @app.task(name="t.replace_with_group", bind=True)
    async def replace_with_group(self: Any, value: Any) -> None:
        raise self.replace(group(identity.si(value), add.si(value, 1)))


async def test_replace_inherits_chain_chord_callbacks_and_the_id(app: App) -> None:
    build_replacing(app)
    add, identity, echo, tsum = t(app, "add"), t(app, "identity"), t(app, "echo"), t(app, "tsum")
    alone = await app.tasks["t.replace_with_chain"].aapply_async((41,), link=echo.s())
    assert await alone.get(timeout=T) == 42  # the replacement's last task took this id
    assert await seen(app, 1) == [42]  # and its callback
    in_chain = chain(identity.si(1), app.tasks["t.replace_with_chain"].s(), add.s(100))
    assert await (await in_chain.send()).get(timeout=T) == 102
    in_chord = chord([app.tasks["t.replace_with_chain"].si(1), identity.si(10)], tsum.s())
    assert await (await in_chord.send()).get(timeout=T) == 12
    grouped = await app.tasks["t.replace_with_group"].aapply_async((5,))
    assert await grouped.get(timeout=T) == [5, 6]
