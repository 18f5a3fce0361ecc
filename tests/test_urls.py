"""Celery-style broker and backend URLs, against real servers: `amqp:///vhost` (localhost,
guest), `pyamqp://`, `redis://host:port` without a db, and `rediss://` with Celery's
ssl_cert_reqs spellings against a redis-server speaking TLS."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from aiotq import App, ConfigurationError
from aiotq.exceptions import BrokerError
from aiotq.testing import run_worker
from aiotq.urls import amqp_url as read_amqp_url

from .conftest import need_redis_server, server_missing
from .servers import RedisServer, free_port


def build(broker: str, backend: str | None = None) -> App:
    app = App("urls", broker=broker, backend=backend)

    @app.task(name="urls.add")
    async def add(x: int, y: int) -> int:
        return x + y

    return app


async def round_trip(app: App) -> None:
    """A task sent through the app's broker comes back through its backend."""
    async with run_worker(app):
        result = await app.asend_task("urls.add", (20, 22))
        assert await result.get(timeout=10) == 42
    await app.aclose()


# -- RabbitMQ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["amqp", "pyamqp"])
async def test_amqp_url_without_host_reaches_local_rabbitmq(amqp_url: str, scheme: str) -> None:
    """kombu's `amqp:///vhost`: guest:guest on localhost:5672; `pyamqp://` is the same."""
    vhost = amqp_url.rsplit("/", 1)[1]
    app = build(f"{scheme}:///{vhost}")
    assert app.backend.url == "rpc://"  # RabbitMQ's default backend, as for amqp://
    await round_trip(app)


async def test_bare_amqp_url_connects_to_the_default_vhost() -> None:
    """`amqp://` alone: localhost, guest:guest, vhost '/' (connects; declares nothing there)."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as exc:
        server_missing("RabbitMQ at 127.0.0.1:5672", exc)
    assert read_amqp_url("amqp://") == "amqp://localhost"
    assert read_amqp_url("pyamqp://guest:pw@:5673//") == "amqp://guest:pw@localhost:5673//"
    app = App("bare", broker="amqp://", backend="memory://")
    await app.broker.connect()
    await app.aclose()


# -- Redis ------------------------------------------------------------------------------------


async def test_redis_url_without_db_uses_db_0(own_redis: Callable[..., RedisServer]) -> None:
    server = own_redis()
    app = build(f"redis://127.0.0.1:{server.port}")
    await round_trip(app)
    with server.client(0) as client:
        assert client.dbsize() > 0  # the result went to db 0


def test_tls_parameters_on_a_plain_redis_url_are_refused() -> None:
    app = App("t", broker="redis://:s3cret@127.0.0.1:6379/0?ssl_cert_reqs=required")
    with pytest.raises(ConfigurationError, match="needs TLS: write rediss://") as info:
        app.finalize()
    assert "s3cret" not in str(info.value)


def test_unknown_ssl_cert_reqs_is_a_one_line_error() -> None:
    app = App("t", broker="rediss://:s3cret@127.0.0.1:6380/0?ssl_cert_reqs=maybe")
    with pytest.raises(
        ConfigurationError, match="bad ssl_cert_reqs 'maybe'.*CERT_REQUIRED"
    ) as info:
        app.finalize()
    assert "s3cret" not in str(info.value)
    assert "\n" not in str(info.value)


class TlsRedis:
    """A redis-server of the test's own that speaks only TLS, with a throwaway CA."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.ca = directory / "ca.crt"
        self.proc: subprocess.Popen[bytes] | None = None

    def make_certificates(self) -> None:
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not on PATH: cannot make a test certificate")
        d = self.directory
        (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for command in (
            f"req -x509 -newkey rsa:2048 -nodes -keyout {d}/ca.key -out {d}/ca.crt -days 1 "
            f"-subj /CN=aiotq-test-ca",
            f"req -newkey rsa:2048 -nodes -keyout {d}/server.key -out {d}/server.csr "
            f"-subj /CN=127.0.0.1",
            f"x509 -req -in {d}/server.csr -CA {d}/ca.crt -CAkey {d}/ca.key -CAcreateserial "
            f"-out {d}/server.crt -days 1 -extfile {d}/san.cnf",
        ):
            subprocess.run(["openssl", *command.split()], check=True, capture_output=True)

    def start(self) -> None:
        d = self.directory
        log_path = d / "redis.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", "0", "--tls-port", str(self.port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d),
                 "--tls-cert-file", f"{d}/server.crt", "--tls-key-file", f"{d}/server.key",
                 "--tls-ca-cert-file", f"{d}/ca.crt", "--tls-auth-clients", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(
                    host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.ca),
                    socket_timeout=2,
                ) as client:  # fmt: skip
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    output = log_path.read_text()
                    if "tls" in output.lower() and "not" in output.lower():
                        pytest.skip(f"this redis-server has no TLS: {output.strip()[-200:]}")
                    raise RuntimeError(f"TLS redis-server did not start: {output[-500:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"TLS redis-server on {self.port} never answered") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    need_redis_server()
    server = TlsRedis(tmp_path)
    server.make_certificates()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("cert_reqs", ["required", "CERT_REQUIRED"])
async def test_rediss_checks_the_certificate_against_ssl_ca_certs(
    tls_redis: TlsRedis, cert_reqs: str
) -> None:
    ca = quote(str(tls_redis.ca), safe="")
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs={cert_reqs}&ssl_ca_certs={ca}"
    await round_trip(build(url))


@pytest.mark.parametrize("cert_reqs", ["none", "CERT_NONE"])
async def test_rediss_with_cert_reqs_none_trusts_any_certificate(
    tls_redis: TlsRedis, cert_reqs: str
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs={cert_reqs}"
    await round_trip(build(url))


async def test_rediss_refuses_a_certificate_no_ca_vouches_for(tls_redis: TlsRedis) -> None:
    """Without the CA, `required` refuses the throwaway certificate: at once, not retried."""
    app = build(f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_cert_reqs=required", "memory://")
    with pytest.raises(BrokerError, match="(?i)certificate"):
        await app.asend_task("urls.add", (1, 2))
    await app.aclose()
