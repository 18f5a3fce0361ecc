"""aiotq against Celery and the async peers, every scenario, in one run: `make bench`.

    .venv/bin/python -m benchmarks.compare [--quick] [--rounds 2] [--redis redis://127.0.0.1:6379/14]
                                           [--brokers redis,rabbitmq] [--only aiotq,saq]

Each (scenario, system) runs as a driver subprocess in the system's own virtualenv
(benchmarks/envs.py) against the same Redis db (flushed before each run) and, for the systems
that support it, the same RabbitMQ (a vhost of the bench's own, recreated before each run;
results still in Redis), systems in alternation, `--rounds` times; the best round counts.
Every run is bounded in time and the worker processes it started are killed by PID afterwards.
Prints one table and writes benchmarks/results/latest.json and latest.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .drivers._common import amqp_url
from .envs import ROOT, python_for
from .targets import rabbitmq_targets

DOCS_IMAGE = ROOT / "docs" / "img" / "benchmarks-latest.png"
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class System:
    label: str
    name: str  # its driver and virtualenv
    pool: str
    concurrency: int
    tuned: bool = False
    how: str = ""
    broker: str = "redis"  # or "rabbitmq" (results stay in Redis)
    polls_s: float = 0.0  # a default result poll this slow: fewer latency round trips
    runs: tuple[str, ...] = ("io", "sms", "noop", "latency", "scale")  # its scenarios

    @property
    def key(self) -> str:
        return self.label if self.broker == "redis" else f"{self.label} (rabbitmq)"


STANDARD = ("io", "sms", "noop", "latency", "scale")
ALL = ("io", "io-conc", "sms", "noop", "latency", "sends", "scale")
SYSTEMS = [
    System("aiotq", "aiotq", "asyncio", 200, how="defaults; -c 200", runs=ALL),
    System("celery prefork", "celery", "prefork", 8, how="defaults; -P prefork -c 8"),
    System("celery gevent", "celery", "gevent", 200, how="defaults; -P gevent -c 200"),
    System("celery gevent tuned", "celery", "gevent", 200, True,
           "result_backend_thread_safe, pool of 250"),
    System("celery threads tuned", "celery", "threads", 200, True,
           "result_backend_thread_safe, pool of 250"),
    System("arq", "arq", "asyncio", 200, how="defaults; max_jobs 200, result poll 0.5 s",
           polls_s=0.5),
    System("arq tuned", "arq", "asyncio", 200, True, "result and queue poll 10 ms"),
    System("taskiq", "taskiq", "asyncio", 200, how="defaults; result poll 0.2 s", polls_s=0.2),
    System("taskiq tuned", "taskiq", "asyncio", 200, True, "result poll 10 ms, pool of 250"),
    System("saq", "saq", "asyncio", 200, how="defaults; concurrency 200"),
    # RabbitMQ: the peers that support it (arq and saq are Redis-only), results in Redis
    System("aiotq", "aiotq", "asyncio", 200, broker="rabbitmq", runs=ALL,
           how="defaults; -c 200; every send waits for RabbitMQ's confirm (persistent)"),
    System("dramatiq", "dramatiq", "threads", 200, broker="rabbitmq",
           runs=(*STANDARD[:4], "sends", "scale"),
           how="defaults; --processes 1 --threads 200; Redis results (a pool of 250);"
               " sends unconfirmed (dramatiq's default)"),
    System("raw aio-pika", "raw", "-", 0, broker="rabbitmq", runs=("sends",),
           how="aio-pika 10 publishing persistent messages to the same queue, each confirmed;"
               " no worker"),
    System("celery prefork", "celery", "prefork", 8, broker="rabbitmq",
           how="defaults; -P prefork -c 8; sends unconfirmed (Celery's default)"),
    System("celery gevent tuned", "celery", "gevent", 200, True,
           "result_backend_thread_safe, pool of 250", broker="rabbitmq"),
    System("taskiq", "taskiq", "asyncio", 200, how="defaults: qos 10, result poll 0.2 s",
           broker="rabbitmq", polls_s=0.2),
    System("taskiq tuned", "taskiq", "asyncio", 200, True,
           "qos 200, result poll 10 ms, pool of 250", broker="rabbitmq"),
]  # fmt: skip
QUICK = {"aiotq", "celery prefork", "taskiq tuned", "saq", "aiotq (rabbitmq)",
         "dramatiq (rabbitmq)", "raw aio-pika (rabbitmq)"}  # fmt: skip

# scenario -> (tasks full, tasks quick). Celery's rows get fewer tasks (its rates are 10-25x
# lower, so the same count would take minutes per row); the figures are rates either way.
SIZES = {"io": (4000, 1000), "io-conc": (4000, 1000), "sms": (4000, 1000),
         "noop": (20000, 3000), "latency": (500, 100), "sends": (10000, 3000)}  # fmt: skip
CELERY_SIZES = {"io": (2000, 500), "sms": (2000, 500), "noop": (5000, 2000), "latency": (500, 100)}
PREFORK_IO = (800, 200)  # about 80 tasks/s at -c 8


def size_for(system: System, kind: str, quick: bool) -> int:
    if system.pool == "prefork" and kind in ("io", "sms"):
        return PREFORK_IO[quick]
    if kind == "latency" and system.polls_s:  # 500 x 0.5 s would outlast the run's bound
        return SIZES["latency"][True]
    return (CELERY_SIZES if system.name == "celery" else SIZES)[kind][quick]


def driver_command(system: System, scenario: str, n: int, args: argparse.Namespace,
                   workers: int = 1, port: int = 0) -> list[str]:  # fmt: skip
    command = [
        python_for(system.name), "-m", f"benchmarks.drivers.{system.name}_driver",
        "--scenario", scenario, "--n", str(n), "--pool", system.pool,
        "--concurrency", str(system.concurrency), "--workers", str(workers),
        "--redis", args.redis, "--gateway-port", str(port), "--timeout", str(args.run_timeout),
    ]  # fmt: skip
    if system.broker == "rabbitmq":
        command += ["--broker", amqp_url()]
    return [*command, "--tuned"] if system.tuned else command


def run_driver(command: list[str], limit_s: float) -> dict[str, Any]:
    """One bounded run; any worker it started is killed afterwards, whatever happened."""
    with tempfile.NamedTemporaryFile("r", suffix=".pids") as pids:
        env = {**os.environ, "BENCH_PIDFILE": pids.name, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            out, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the driver stops its workers
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            out = json.dumps({"error": f"timed out after {limit_s:.0f}s"})
        for line in pids.read().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(line), signal.SIGKILL)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": (err.strip().splitlines() or ["no output"])[-1][:300]}
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def better(a: dict[str, Any] | None, b: dict[str, Any], scenario: str) -> dict[str, Any]:
    """The best of two rounds (a failed round loses to any success)."""
    if a is None or "error" in a:
        return b
    if "error" in b:
        return a
    if scenario == "sends":  # separate figures: the best of each
        return {k: max(a.get(k, 0), b.get(k, 0)) if k.endswith("_per_s") else v
                for k, v in {**a, **b}.items()}  # fmt: skip
    key = {"io": "tasks_per_s", "io-conc": "tasks_per_s", "sms": "tasks_per_s",
           "noop": "drain_per_s", "sends": "seq_per_s"}.get(scenario)  # fmt: skip
    if key is None:  # latency: the lower p50
        return b if b["p50_ms"] < a["p50_ms"] else a
    return b if b[key] > a[key] else a


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reduced sizes, one round, fewer rows")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--only", default="", help="comma-separated system labels")
    parser.add_argument("--brokers", default="redis,rabbitmq", help="comma-separated")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    args.run_timeout = args.run_timeout or (60.0 if args.quick else 180.0)
    systems = [s for s in SYSTEMS if not args.quick or s.key in QUICK]
    brokers = args.brokers.split(",")
    if unknown := set(brokers) - {s.broker for s in SYSTEMS}:
        parser.error(f"unknown broker(s) {sorted(unknown)}: use redis, rabbitmq")
    systems = [s for s in systems if s.broker in brokers]
    if args.only:
        systems = [s for s in systems if s.label in args.only.split(",")]
    for name in sorted({s.name for s in systems}):
        python_for(name)  # install first, so installs are never timed
    gateway = subprocess.Popen([sys.executable, "-m", "benchmarks.gateway"], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert gateway.stdout is not None
    port = int(gateway.stdout.readline())
    best: dict[tuple[str, System], dict[str, Any]] = {}
    began = time.monotonic()
    try:
        for round_no in range(1, rounds + 1):
            for scenario in ALL:
                # in alternation, round after round; each round starts with the next system,
                # so none always runs first after a vhost was flushed or a heavier system ran
                turn = (round_no - 1) % len(systems)
                for system in systems[turn:] + systems[:turn]:
                    if scenario not in system.runs:
                        continue
                    kind = "noop" if scenario == "scale" else scenario
                    n = size_for(system, kind, args.quick)
                    workers = 2 if scenario == "scale" else 1
                    command = driver_command(system, kind, n, args, workers, port)
                    figures = run_driver(command, args.run_timeout)
                    figures["n"] = n
                    print(f"round {round_no} {scenario:8} {system.key:32} {figures}", flush=True)
                    best[(scenario, system)] = better(best.get((scenario, system)), figures, kind)
    finally:
        gateway.terminate()
        gateway.wait()
    results = table(best, systems)
    met = rabbitmq_targets(best, systems)
    RESULTS.mkdir(exist_ok=True)
    # a quick run or a subset never replaces the full run's figures
    subset = bool(args.only) or set(brokers) != {s.broker for s in SYSTEMS}
    name = "quick" if args.quick else "subset" if subset else "latest"
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "rounds": rounds, "quick": args.quick,
            "seconds": round(time.monotonic() - began), "redis": args.redis,
            "systems": {s.key: s.how for s in systems}, "targets": met}  # fmt: skip
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    chart(results, RESULTS / f"{name}.png")
    if name == "latest":  # the docs site shows the last run (it cannot link outside docs/)
        shutil.copyfile(RESULTS / "latest.png", DOCS_IMAGE)
    print(f"\nwrote {RESULTS / name}.json and {name}.png in {meta['seconds']} s")


FIGURES = [  # (scenario, figure, unit, higher is better)
    ("io", "tasks_per_s", "tasks/s", True),
    ("io", "of_limit", "of 2,000/s", True),
    ("io-conc", "tasks_per_s", "tasks/s, sends at once", True),
    ("io-conc", "of_limit", "of 2,000/s, sends at once", True),
    ("sends", "seq_per_s", "sends/s, one after another", True),
    ("sends", "conc_per_s", "sends/s, all at once", True),
    ("sends", "bulk_per_s", "sends/s, send_many", True),
    ("sms", "tasks_per_s", "tasks/s", True),
    ("noop", "drain_per_s", "tasks/s", True),
    ("noop", "enqueue_per_s", "sends/s", True),
    ("noop", "cpu_us_per_task", "µs CPU/task", False),
    ("noop", "peak_rss_mb", "MB RSS", False),
    ("io", "peak_rss_mb", "MB RSS", False),
    ("latency", "p50_ms", "ms p50", False),
    ("latency", "p95_ms", "ms p95", False),
    ("latency", "p99_ms", "ms p99", False),
    ("scale", "drain_per_s", "tasks/s, 2 workers", True),
]


def table(
    best: dict[tuple[str, System], dict[str, Any]], systems: list[System]
) -> list[dict[str, Any]]:
    """One row per (figure, system); each ratio is to aiotq on the same broker."""
    rows: list[dict[str, Any]] = []
    header = (
        f"{'scenario':8} {'system':22} {'broker':9} {'pool/conc':14} {'figure':>10} {'unit':20}"
    )
    print(f"\n{header} {'ratio to aiotq':>14}")
    aiotq = {s.broker: s for s in systems if s.name == "aiotq"}
    for scenario, figure, unit, _ in FIGURES:
        for system in systems:
            reference = aiotq.get(system.broker)
            mine = best.get((scenario, reference), {}).get(figure) if reference else None
            figures = best.get((scenario, system), {})
            value = figures.get(figure)
            head = f"{scenario:8} {system.label:22} {system.broker:9}"
            base = {"scenario": scenario, "system": system.label, "broker": system.broker}
            if "error" in figures:
                print(f"{head} {'FAILED':>10}  {figures['error'][:80]}")
                rows.append({**base, "figure": figure, "error": figures["error"]})
                continue
            if value is None:
                continue
            ratio = value / mine if mine else None
            pool = f"{system.pool} -c {system.concurrency}"
            shown = f"{ratio:.2f}x" if ratio is not None else ""
            print(f"{head} {pool:14} {value:>10} {unit:20} {shown:>14}")
            rows.append({**base, "pool": pool, "figure": figure, "unit": unit, "value": value,
                         "ratio_to_aiotq": ratio, "n": figures.get("n")})  # fmt: skip
    for system in systems:
        one = best.get(("noop", system), {}).get("drain_per_s")
        two = best.get(("scale", system), {}).get("drain_per_s")
        if one and two:
            factor = two / one
            print(f"{'scale':8} {system.label:22} {system.broker:9} {'2 workers':14} "
                  f"{factor:>10.2f} {'x one worker':20}")  # fmt: skip
            rows.append({"scenario": "scale", "system": system.label, "broker": system.broker,
                         "figure": "factor", "value": round(factor, 2)})  # fmt: skip
    return rows


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Four panels a person reads at a glance; needs matplotlib (the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return
    panels = [("io", "tasks_per_s", "io: 100 ms tasks/s (higher is better)"),
              ("noop", "drain_per_s", "noop drain: tasks/s (higher is better)"),
              ("latency", "p50_ms", "round trip p50: ms (lower is better)"),
              ("noop", "peak_rss_mb", "worker RSS during noop: MB (lower is better)")]  # fmt: skip
    figure, axes = plt.subplots(2, 2, figsize=(13, 8))
    for axis, (scenario, key, title) in zip(axes.flat, panels, strict=True):
        data = [
            (_chart_label(r), r["value"])
            for r in rows
            if r["scenario"] == scenario and r.get("figure") == key and "value" in r
        ]
        labels = [label for label, _ in data]
        colors = ["#d62728" if label.startswith("aiotq") else "#7f7f7f" for label in labels]
        axis.barh(labels, [value for _, value in data], color=colors)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        for index, (_, value) in enumerate(data):
            axis.text(value, index, f" {value:g}", va="center", fontsize=8)
    figure.suptitle(
        "aiotq vs Celery, arq, taskiq, saq: Redis (and RabbitMQ) broker, Redis results, "
        "one worker process"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _chart_label(row: dict[str, Any]) -> str:
    broker = row.get("broker", "redis")
    return row["system"] if broker == "redis" else f"{row['system']} · {broker}"


if __name__ == "__main__":
    main()
