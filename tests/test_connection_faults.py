"""The connection boundary (issue 12): never hang, and say clearly what is wrong.

Each test faults a real server: a burst of first sends, a paused redis-server, an HTTP
server on the Redis port, a refused password or vhost, a forked producer. Each bounds how
long the answer may take and reads the one line the user would see.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiotq import (
    AccessRefused,
    App,
    BackendConnectionError,
    BrokerConnectionError,
    ConfigurationError,
)

from .servers import RedisServer
from .workerproc import WorkerProcess

BURST = 1000
PASSWORD = "s3cret-pa55"
WRONG = "n0t-the-pa55word"


def protected(server: RedisServer) -> RedisServer:
    """Require PASSWORD from now on (own_redis(requirepass=...) cannot start: its readiness
    ping carries no password)."""
    with server.client() as client:
        client.config_set("requirepass", PASSWORD)
    return server


def with_password(url: str, password: str) -> str:
    return url.replace("redis://", f"redis://:{password}@", 1)


@pytest.fixture(params=["memory", "sqlite", "redis", "amqp"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/x.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# -- 1. a burst of first sends ---------------------------------------------------------------
async def test_a_burst_of_concurrent_first_sends_completes(any_broker: str) -> None:
    """More concurrent first sends than the pool has connections (10): each used to check
    out a connection of its own (Redis) or open one (RabbitMQ) and the extras were never
    given back, so the burst waited for ever."""
    app = App("burst", broker=any_broker, backend="memory://")
    try:
        async with asyncio.timeout(15):
            await asyncio.gather(*(app.asend_task("e2e.add", (1, 2)) for _ in range(BURST)))
            await app.asend_task("e2e.add", (1, 2))  # and the pool is whole afterwards
            assert await app.broker.purge("default") == BURST + 1
    finally:
        await app.aclose()


# -- 2. a server that accepts and never answers ---------------------------------------------
@pytest.mark.parametrize("warm", [True, False], ids=["connected-before", "fresh-producer"])
async def test_a_send_to_a_paused_redis_fails_within_the_publish_bound(
    own_redis: Callable[..., RedisServer], warm: bool
) -> None:
    server = protected(own_redis())
    url = with_password(server.url(0), PASSWORD)
    app = App("paused", broker=url, backend="memory://", broker_publish_retry_s=1.5)
    try:
        if warm:
            await app.asend_task("e2e.add", (1, 2))
        server.pause()
        began = time.monotonic()
        with pytest.raises(BrokerConnectionError) as info:
            async with asyncio.timeout(10):  # without a bound it waited for ever
                await app.asend_task("e2e.add", (1, 2))
        assert time.monotonic() - began < 1.5 + 1.5
        message = str(info.value)
        assert f"redis://:**@127.0.0.1:{server.port}/0" in message
        assert "gave up after" in message and PASSWORD not in message
        server.resume()
        async with asyncio.timeout(10):
            await app.asend_task("e2e.add", (1, 2))  # the same producer works again
        # a send that timed out may still land (the server had it): at least once, as ever
        assert await app.broker.purge("default") >= (2 if warm else 1)
    finally:
        server.resume()
        await app.aclose()


async def test_result_store_and_get_on_a_paused_redis_fail_in_bounded_time(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = own_redis()
    app = App("paused", broker="memory://", backend=server.url(1), broker_socket_timeout_s=1.0)
    backend = app.backend
    try:
        await backend.store([("before", b"1")], ttl_s=60)
        server.pause()
        for operation in (backend.get("before"), backend.store([("during", b"2")], ttl_s=60)):
            began = time.monotonic()
            with pytest.raises(BackendConnectionError, match=f"127.0.0.1:{server.port}/1"):
                async with asyncio.timeout(10):
                    await operation
            assert time.monotonic() - began < 3
        server.resume()
        async with asyncio.timeout(10):
            assert await backend.get("before") == b"1"
    finally:
        server.resume()
        await app.aclose()


# -- 3. another protocol on the port, a port that is no number -------------------------------
async def test_redis_url_to_a_server_of_another_protocol_fails_at_once_naming_it() -> None:
    async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    http = await asyncio.start_server(answer_http, "127.0.0.1", 0)
    port = http.sockets[0].getsockname()[1]
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    app = App("http", broker=url, backend=url)
    try:
        for operation in (app.asend_task("e2e.add", (1, 2)), app.backend.get("x")):
            began = time.monotonic()
            with pytest.raises(ConfigurationError) as info:  # not retried for 10s: it stays HTTP
                async with asyncio.timeout(5):
                    await operation
            assert time.monotonic() - began < 1
            message = str(info.value)
            assert f"redis://:**@127.0.0.1:{port}/0" in message and "Redis protocol" in message
            assert "\n" not in message and PASSWORD not in message
    finally:
        await app.aclose()
        http.close()
        await http.wait_closed()


@pytest.mark.parametrize("setting", ["broker", "backend"])
def test_a_port_that_is_no_number_fails_when_the_app_finalizes(setting: str) -> None:
    urls = {"broker": "memory://", "backend": "memory://", setting: f"redis://:{PASSWORD}@h:abc/0"}
    app = App("port", **urls)
    with pytest.raises(ConfigurationError, match=r"bad port .*'redis://:\*\*@h:abc/0'") as info:
        app.finalize()
    assert PASSWORD not in str(info.value)


# -- 4. the sync API in a forked child -------------------------------------------------------
def _child_exit_code(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child hung for {timeout}s")


@pytest.fixture(params=["redis", "sqlite"])
def forked_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        request.getfixturevalue("redis_url")
        if request.param == "redis"
        else f"sqlite:///{tmp_path}/fork.db"
    )
    worker = WorkerProcess(url).ready()
    yield url
    worker.stop()


def test_the_sync_api_works_in_a_child_forked_after_a_send(forked_setup: str) -> None:
    """gunicorn --preload, uWSGI without lazy-apps, multiprocessing: the parent sent, then
    forked. The child has no portal thread (nor SQLite thread): it used to wait for ever."""
    app = App("fork", broker=forked_setup)
    try:
        assert app.send_task("e2e.add", (1, 2)).get(timeout=10) == 3
        pid = os.fork()
        if pid == 0:  # the child: exit 0 only with the right answer, whatever happens
            code = 1
            try:
                # A full collection first: the parent's connections, if the child let them
                # be finalized, would leave the epoll set the fork shares with the parent.
                gc.collect()
                code = 0 if app.send_task("e2e.add", (2, 3)).get(timeout=10) == 5 else 3
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        assert _child_exit_code(pid, timeout=20) == 0
        assert app.send_task("e2e.add", (3, 4)).get(timeout=10) == 7  # the parent's still work
    finally:
        app.close()


# -- 5. refused credentials and vhosts at worker start ---------------------------------------
def refused_at_start(broker_url: str, *, env: dict[str, str] | None = None) -> str:
    """Start a worker that must exit within a few seconds with one error line; its stderr."""
    began = time.monotonic()
    worker = WorkerProcess(broker_url, env=env)
    try:
        code = worker.wait(timeout=15)
    except Exception:
        raise AssertionError(f"the worker kept retrying:\n{worker.log}") from None
    finally:
        worker.stop()
    assert time.monotonic() - began < 10
    errors = [line for line in worker.lines if line.startswith("Error: ")]
    assert code == 2 and len(errors) == 1, worker.log
    assert "Traceback" not in worker.log and len(worker.lines) <= 3, worker.log
    assert WRONG not in worker.log and PASSWORD not in worker.log
    return errors[0]


async def test_a_send_with_a_wrong_redis_password_is_refused_at_once(
    own_redis: Callable[..., RedisServer],
) -> None:
    """A refusal is not retried for broker_publish_retry_s: the same password stays wrong."""
    server = protected(own_redis())
    app = App("refused", broker=with_password(server.url(0), WRONG), backend="memory://")
    try:
        began = time.monotonic()
        with pytest.raises(AccessRefused, match="refused access") as info:
            await app.asend_task("e2e.add", (1, 2))
        assert time.monotonic() - began < 1
        assert WRONG not in str(info.value)
    finally:
        await app.aclose()


def test_a_wrong_redis_password_for_the_broker_exits_with_one_line(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = protected(own_redis())
    error = refused_at_start(with_password(server.url(0), WRONG))
    assert f"redis://:**@127.0.0.1:{server.port}/0 refused access" in error


def test_a_wrong_redis_password_for_the_backend_exits_with_one_line(
    own_redis: Callable[..., RedisServer],
) -> None:
    server = protected(own_redis())
    backend = with_password(server.url(1), WRONG)
    error = refused_at_start(
        with_password(server.url(0), PASSWORD), env={"AIOTQ_RESULT_BACKEND": backend}
    )
    assert f"redis://:**@127.0.0.1:{server.port}/1 refused access" in error


def test_a_backend_unreachable_at_start_is_retried_like_the_broker(
    redis_url: str, own_redis: Callable[..., RedisServer]
) -> None:
    server = own_redis()
    server.kill()  # its port is free now: nothing answers there
    worker = WorkerProcess(redis_url, env={"AIOTQ_RESULT_BACKEND": server.url(1)})
    try:
        worker.wait_for_log(rf"cannot reach Redis at .*:{server.port}/1.*retrying in", timeout=15)
        server.restart()
        worker.ready()
    finally:
        worker.stop()


def test_a_wrong_rabbitmq_password_exits_with_one_line(amqp_url: str) -> None:
    error = refused_at_start(amqp_url.replace("guest:guest@", f"guest:{WRONG}@", 1))
    assert "amqp://guest:**@127.0.0.1:5672/" in error and "refused the login" in error


def test_a_missing_rabbitmq_vhost_exits_with_one_line_naming_it(amqp_url: str) -> None:
    # amqp_url only for RabbitMQ being up (else skip); the worker is given another vhost
    vhost = f"aiotq-missing-{uuid.uuid4().hex[:8]}"
    error = refused_at_start(f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    assert f"refused vhost {vhost!r}" in error and "does not exist" in error
