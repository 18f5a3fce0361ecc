"""The RabbitMQ targets of the confirmed-publishing issue, checked on one run's figures.

Each target compares aiotq with a reference measured in the same run: raw aio-pika's
confirmed persistent publishes (the floor for a send that promises as much), dramatiq on
the same RabbitMQ (whose sends are not confirmed), or a fixed figure.
"""

from __future__ import annotations

from typing import Any

LIMIT = 2000.0  # -c 200 of 100 ms tasks


def rabbitmq_targets(best: dict[tuple[str, Any], dict[str, Any]], systems: list[Any]) -> list[str]:
    """Print and return one line per target that this run has the figures for."""
    by = {s.label: s for s in systems if s.broker == "rabbitmq"}

    def figure(scenario: str, label: str, key: str) -> float | None:
        system = by.get(label)
        value = best.get((scenario, system), {}).get(key) if system else None
        return float(value) if isinstance(value, (int, float)) else None

    lines: list[str] = []

    def check(name: str, mine: float | None, ref: float | None, want: float, low: bool) -> None:
        if mine is None or ref is None or not ref:
            return
        ratio = mine / ref
        met = ratio <= want if low else ratio >= want
        lines.append(f"{name}: {mine:g} vs {ref:g} = {ratio:.2f} (target {'≤' if low else '≥'}"
                     f" {want:g}): {'met' if met else 'MISSED'}")  # fmt: skip

    raw_seq = figure("sends", "raw aio-pika", "seq_per_s")
    raw_conc = figure("sends", "raw aio-pika", "conc_per_s")
    check("awaited sends vs raw aio-pika sequential", figure("sends", "aiotq", "seq_per_s"),
          raw_seq, 0.9, False)  # fmt: skip
    check("concurrent sends vs raw aio-pika concurrent", figure("sends", "aiotq", "conc_per_s"),
          raw_conc, 0.9, False)  # fmt: skip
    check("send_many vs raw aio-pika concurrent", figure("sends", "aiotq", "bulk_per_s"),
          raw_conc, 0.9, False)  # fmt: skip
    check("io, one sequential producer, vs dramatiq", figure("io", "aiotq", "tasks_per_s"),
          figure("io", "dramatiq", "tasks_per_s"), 1.1, False)  # fmt: skip
    check("io, concurrent producer, of the 2,000/s limit",
          figure("io-conc", "aiotq", "tasks_per_s"), LIMIT, 0.9, False)  # fmt: skip
    check("noop drain of 6,000/s", figure("noop", "aiotq", "drain_per_s"), 6000.0, 1.0, False)
    check("round trip p50 vs dramatiq", figure("latency", "aiotq", "p50_ms"),
          figure("latency", "dramatiq", "p50_ms"), 1.1, True)  # fmt: skip
    if lines:
        print("\nRabbitMQ targets (same run):")
        for line in lines:
            print(f"  {line}")
    return lines
