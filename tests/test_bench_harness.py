"""The benchmark harness's own logic (no servers): which round counts, how big a run is, and
that every ratio is to aiotq on the same broker, so a RabbitMQ row is never compared with a
Redis one. The figures themselves come from `make bench`, never from tests."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.compare import SYSTEMS, better, size_for, table
from benchmarks.drivers._common import succeeded


def system(label: str, broker: str = "redis"):  # type: ignore[no-untyped-def]
    return next(s for s in SYSTEMS if s.label == label and s.broker == broker)


def test_ratios_are_to_aiotq_on_the_same_broker() -> None:
    best = {
        ("noop", system("aiotq")): {"drain_per_s": 20000},
        ("noop", system("saq")): {"drain_per_s": 2000},
        ("noop", system("aiotq", "rabbitmq")): {"drain_per_s": 5000},
        ("noop", system("taskiq tuned", "rabbitmq")): {"drain_per_s": 2500},
        ("scale", system("aiotq")): {"drain_per_s": 34000},
    }
    rows = table(best, list(SYSTEMS))
    drain = {(r["system"], r["broker"]): r for r in rows if r.get("figure") == "drain_per_s"}
    assert drain[("saq", "redis")]["ratio_to_aiotq"] == pytest.approx(0.1)
    assert drain[("taskiq tuned", "rabbitmq")]["ratio_to_aiotq"] == pytest.approx(0.5)
    [factor] = [r for r in rows if r.get("figure") == "factor"]
    assert (factor["system"], factor["broker"], factor["value"]) == ("aiotq", "redis", 1.7)


def test_a_failed_run_is_a_failed_row_not_a_missing_one() -> None:
    best = {("latency", system("arq")): {"error": "timed out after 180s"}}
    rows = table(best, [system("aiotq"), system("arq")])
    assert [r["error"] for r in rows if r["system"] == "arq"] == ["timed out after 180s"] * 3


def test_the_best_round_counts_and_a_failure_never_beats_a_success() -> None:
    ok, faster, failed = {"drain_per_s": 10}, {"drain_per_s": 20}, {"error": "boom"}
    assert better(ok, faster, "noop") is faster
    assert better(ok, failed, "noop") is ok
    assert better(failed, ok, "noop") is ok
    assert better({"p50_ms": 1.0}, {"p50_ms": 0.5}, "latency") == {"p50_ms": 0.5}


def test_sizes_keep_slow_defaults_inside_the_run_bound() -> None:
    assert size_for(system("aiotq"), "latency", quick=False) == 500
    assert size_for(system("arq"), "latency", quick=False) == 100  # 500 polls of 0.5 s: 250 s
    assert size_for(system("celery prefork"), "io", quick=False) == 800
    assert size_for(system("aiotq", "rabbitmq"), "noop", quick=False) == 20000


async def test_a_peer_result_that_never_comes_fails_the_run() -> None:
    async def failed() -> None:
        raise ValueError("task failed")

    async def never() -> None:
        raise TimeoutError

    assert await succeeded(asyncio.sleep(0)) is True
    assert await succeeded(failed()) is False
    with pytest.raises(TimeoutError):
        await succeeded(never())
