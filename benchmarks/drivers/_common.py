"""What every system's driver shares: options, worker processes, memory sampling, output.

A driver runs one scenario for one system in that system's own environment and prints one
JSON line of figures. Stdlib only, so it imports in every peer's virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
IO_S = 0.1  # each io / sms task waits this long


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--scenario", required=True, choices=["io", "io-conc", "sms", "noop", "latency", "sends"]
    )
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--pool", default="")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="results (and broker)")
    parser.add_argument("--broker", default="", help="amqp://... for the RabbitMQ rows")
    parser.add_argument("--tuned", action="store_true", help="the peer's tuned settings")
    parser.add_argument("--gateway-port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0)
    opts = parser.parse_args()
    opts.broker = opts.broker or opts.redis
    # what the systems' app modules read, in this process and the workers it starts
    os.environ.update(BENCH_REDIS=opts.redis, BENCH_BROKER=opts.broker,
                      BENCH_TUNED="1" if opts.tuned else "0",
                      BENCH_CONCURRENCY=str(opts.concurrency))  # fmt: skip
    return opts


BENCH_VHOST = "aiotq-bench"


def amqp_url(host: str = "127.0.0.1") -> str:
    """The RabbitMQ rows' broker: a vhost of the bench's own, recreated before every run."""
    return f"amqp://guest:guest@{host}:5672/{BENCH_VHOST}"


def flush(opts: argparse.Namespace) -> None:
    """Start from an empty Redis db (the bench's own: --redis) and, for the RabbitMQ rows, an
    empty vhost; with the servers' own tools, so no client library is needed."""
    host_port, db = opts.redis.removeprefix("redis://").split("/")
    host, port = host_port.split(":")
    subprocess.run(["redis-cli", "-h", host, "-p", port, "-n", db, "flushdb"], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    if opts.broker.startswith("amqp"):
        flush_vhost(opts.broker)


def flush_vhost(url: str) -> None:
    """Delete and create again the vhost of an amqp:// URL (rabbitmqctl, no client library)."""
    vhost = url.rsplit("/", 1)[1]
    for command in (["delete_vhost", vhost], ["add_vhost", vhost],
                    ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):  # fmt: skip
        done = subprocess.run(["rabbitmqctl", "-q", *command], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        if done.returncode and command[0] != "delete_vhost":  # absent the first time
            raise RuntimeError(f"rabbitmqctl {command[0]} failed: {done.stderr.strip()}")


class Workers:
    """Worker processes started for one run, each in its own process group, stopped by PID;
    samples the resident memory of their process trees meanwhile (peak, in MB)."""

    def __init__(
        self, command: Sequence[str], count: int, env: dict[str, str] | None = None
    ) -> None:
        environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        # logs go to files, not pipes: a chatty worker must never block on a full pipe
        self.logs = [tempfile.TemporaryFile() for _ in range(count)]  # noqa: SIM115 - closed in stop()
        self.procs = [
            subprocess.Popen(
                [part.replace("{index}", str(index)) for part in command],  # a name per worker
                cwd=ROOT,
                env=environment,
                start_new_session=True,
                stdout=log,
                stderr=log,
            )
            for index, log in enumerate(self.logs)
        ]
        pidfile = os.environ.get("BENCH_PIDFILE")
        if pidfile:  # the orchestrator kills whatever a killed driver left behind
            with open(pidfile, "a") as out:
                out.writelines(f"{proc.pid}\n" for proc in self.procs)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            total = sum(_tree_rss_kb(proc.pid) for proc in self.procs) / 1024
            self.peak_mb = max(self.peak_mb, total)

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                log.seek(0)
                lines = log.read().decode(errors="replace").strip().splitlines() or ["no output"]
                # the exception's own line is the last one; the row shows it first
                raise RuntimeError(f"a worker exited with {proc.returncode}: {lines[-1]}")

    def stop(self) -> None:
        self._stop.set()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.logs:
            log.close()


@contextlib.contextmanager
def workers(
    command: Sequence[str], count: int, env: dict[str, str] | None = None
) -> Iterator[Workers]:
    started = Workers(command, count, env)
    try:
        yield started
    finally:
        started.stop()


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants (prefork children count)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError), open(f"/proc/{current}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantiles_ms(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles([s * 1000 for s in samples], n=100)
    return {"p50_ms": round(q[49], 3), "p95_ms": round(q[94], 3), "p99_ms": round(q[98], 3)}


def report(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), flush=True)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds through `with workers(...)`


def run(main: Any) -> None:
    """Run the driver's async main; a failure is reported as a failed row, not a crash."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        figures = asyncio.run(main())
    except Exception as exc:  # the orchestrator shows it as a failed row
        report({"error": f"{type(exc).__name__}: {exc}"[:500]})
        sys.exit(1)
    report(figures)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants."""
    total = 0.0
    for entry in [str(pid), *_descendants(pid)]:
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(entry))
    return total


def _descendants(pid: int) -> list[str]:
    out, todo = [], [pid]
    parents: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as stat,
            ):
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(parent, []).append(entry)
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(int(child))
    return out


class Driver:
    """One system: how its worker starts and how its producer sends and waits."""

    def worker_command(self, opts: argparse.Namespace) -> list[str]:
        raise NotImplementedError

    async def start(self, opts: argparse.Namespace) -> None:
        """Producer connections."""

    async def stop(self) -> None: ...

    async def send(self, kind: str, i: int) -> Any:
        """kind: noop (add(i, i)), io (wait IO_S), sms (POST to the gateway)."""
        raise NotImplementedError

    async def wait(self, handle: Any, timeout: float) -> bool:
        """True on success; False when the task failed; raises TimeoutError when none came."""
        raise NotImplementedError

    async def send_concurrent(self, kind: str, n: int) -> list[Any] | None:
        """n sends at once, their confirms (if any) awaited together; None if the system's
        producer cannot (a blocking client)."""
        return None

    async def send_bulk(self, kind: str, n: int) -> list[Any] | None:
        """n sends as batches of BULK in one call each; None where there is no such call."""
        return None


BULK = 1000  # calls per send_many in the sends scenario


async def succeeded(result: Any) -> bool:
    """Await a peer's result: True on success, False when the task failed; a TimeoutError
    (no result at all) propagates, so the run fails instead of counting a loss."""
    try:
        await result
    except TimeoutError:
        raise
    except Exception:
        return False
    return True


async def scenario(driver: Driver, opts: argparse.Namespace) -> dict[str, Any]:
    flush(opts)
    await driver.start(opts)
    try:
        return await _scenario(driver, opts)
    finally:
        await driver.stop()


async def _sends(driver: Driver, n: int) -> dict[str, Any]:
    """Sends only, no worker: one after another, all at once, in batches (what the system
    has of each). Every rate is n over the time until the last send returned."""
    began = time.perf_counter()
    for i in range(n):
        await driver.send("noop", i)
    figures: dict[str, Any] = {"seq_per_s": round(n / (time.perf_counter() - began))}
    began = time.perf_counter()
    if await driver.send_concurrent("noop", n) is not None:
        figures["conc_per_s"] = round(n / (time.perf_counter() - began))
    began = time.perf_counter()
    if await driver.send_bulk("noop", n) is not None:
        figures["bulk_per_s"] = round(n / (time.perf_counter() - began))
    return figures


async def _scenario(driver: Driver, opts: argparse.Namespace) -> dict[str, Any]:
    if opts.scenario == "sends":
        return await _sends(driver, opts.n)
    n, command = opts.n, driver.worker_command(opts)
    if opts.scenario == "noop":
        began = time.perf_counter()
        handles = [await driver.send("noop", i) for i in range(n)]
        enqueue = n / (time.perf_counter() - began)
        with workers(command, opts.workers) as started:
            # From the first result to the last-sent task's result, so neither worker start-up
            # nor the producer's own checking is timed; then every result is checked.
            await driver.wait(handles[0], 120)
            first = time.perf_counter()
            cpu_before = sum(tree_cpu_seconds(p.pid) for p in started.procs)
            await driver.wait(handles[-1], opts.timeout)
            elapsed = time.perf_counter() - first
            cpu = sum(tree_cpu_seconds(p.pid) for p in started.procs) - cpu_before
            failed = await _wait_all(driver, handles, opts.timeout)
            started.check()
            peak = started.peak_mb
        return {"enqueue_per_s": round(enqueue), "drain_per_s": round((n - 1) / elapsed),
                "cpu_us_per_task": round(cpu / (n - 1) * 1e6, 1), "failed": failed,
                "peak_rss_mb": round(peak, 1)}  # fmt: skip
    with workers(command, opts.workers) as started:
        await driver.wait(await driver.send("noop", 0), 120)  # warm: the worker is up
        if opts.scenario == "latency":
            samples = []
            for i in range(n):
                sent = time.perf_counter()
                await driver.wait(await driver.send("noop", i), 30)
                samples.append(time.perf_counter() - sent)
            return quantiles_ms(samples)
        began = time.perf_counter()
        if opts.scenario == "io-conc":  # one producer sending everything at once
            handles = await driver.send_concurrent("io", n) or []
            if not handles:
                raise RuntimeError("this system's producer cannot send concurrently")
        else:
            handles = [await driver.send(opts.scenario, i) for i in range(n)]
        failed = await _wait_all(driver, handles, opts.timeout)
        elapsed = time.perf_counter() - began
        started.check()
        limit = opts.concurrency * opts.workers / IO_S
        return {"tasks_per_s": round(n / elapsed, 1), "of_limit": round(n / elapsed / limit, 3),
                "failed": failed, "peak_rss_mb": round(started.peak_mb, 1)}  # fmt: skip


async def _wait_all(driver: Driver, handles: list[Any], timeout: float) -> int:
    """Wait for every result in order; the number that failed."""
    deadline = time.monotonic() + timeout
    failed = 0
    for handle in handles:
        failed += not await driver.wait(handle, max(0.1, deadline - time.monotonic()))
    return failed
