"""A RabbitMQ cluster of the suite's own: nodes on free ports in a temp dir, stopped by PID.

Never the system RabbitMQ (`rabbit@localhost` on 5672, shared by the rest of the suite):
each node here has a name of its own (`aiotq-<run>-c1@localhost`), its own AMQP and
distribution ports, data, logs and config in the temp dir, no plugins, and an Erlang cookie
of its own (HOME is the temp dir), so this module's rabbitmqctl cannot even reach the
system node. Nodes run as the user running the tests (root on CI: RabbitMQ allows it).

`tq` is the tests' e2e app with quorum queues, for `aiotq worker tests.rabbit_cluster:tq`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiotq import App

from .apps import build
from .servers import free_port

# Debian's /usr/sbin/rabbitmq-server and rabbitmqctl are wrappers that `su` to the rabbitmq
# user (who can write none of our temp dir, and whose cookie is the system node's): the
# real scripts are these.
DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
BOOT_S = 90.0  # a node's boot on a busy 2-core machine, with room to spare
CTL_S = 60.0


def quorum_app(broker: str | None = None, backend: str | None = None) -> App:
    """The e2e tasks (tests/apps.py), their queues declared as quorum queues."""
    app = build(broker, backend)
    app.conf.broker_queue_type = "quorum"
    return app


tq = quorum_app()


def rabbitmq_scripts() -> Path | None:
    """The directory of the real rabbitmq-server and rabbitmqctl, or None: not installed."""
    if (DEBIAN_SCRIPTS / "rabbitmq-server").exists():
        return DEBIAN_SCRIPTS
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found else None


def _until(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g}s: {what()}")
        time.sleep(0.05)


class RabbitNode:
    """One node: `launch()` (again after `kill()`: its data dir keeps it in the cluster),
    `kill()` (SIGKILL of its Erlang VM: a crash), `ctl(...)` (rabbitmqctl -n this node)."""

    def __init__(self, scripts: Path, directory: Path, name: str, cookie: str) -> None:
        self.scripts = scripts
        self.directory = directory
        self.name = name
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        cookie_file = directory / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)  # Erlang refuses a cookie others may read
        # our own config, so that /etc/rabbitmq's (listener on 5672, the system node's name)
        # is never read; no plugins (management off)
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        where = self.directory
        env.update({
            "HOME": str(where),  # the cookie: ours, not the system node's
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(where / "mnesia"),
            "RABBITMQ_LOG_BASE": str(where / "log"),
            "RABBITMQ_CONFIG_FILE": str(where / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(where / "advanced.config"),  # none: defaults
            "RABBITMQ_CONF_ENV_FILE": str(where / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(where / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(where / "beam.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })  # fmt: skip
        return env

    def launch(self) -> None:
        """Start the node (not waiting for it: `wait_up()`)."""
        (self.directory / "beam.pid").unlink(missing_ok=True)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115
        # the open-files limit raised to the hard one, as .ci/run does for the system node
        command = 'ulimit -n "$(ulimit -Hn)"; exec "$0"'
        self.proc = subprocess.Popen(
            ["sh", "-c", command, str(self.scripts / "rabbitmq-server")],
            cwd=self.directory, env=self._env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def listening(self) -> bool:
        """Its AMQP listener answers: opened last in a boot, closed first by stop_app."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def wait_up(self, timeout: float = BOOT_S) -> None:
        _until(lambda: self.listening() or not self.alive, timeout, self.log_tail)
        if not self.listening():
            raise RuntimeError(f"{self.name} exited while booting:\n{self.log_tail()}")

    def wait_down(self, timeout: float = CTL_S) -> None:
        _until(lambda: not self.listening(), timeout, lambda: f"{self.name} still listening")

    def log_tail(self) -> str:
        path = self.directory / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        logs = sorted((self.directory / "log").glob("*.log"))
        for found in logs:
            text += f"\n--- {found.name}\n" + found.read_text(errors="replace")[-3000:]
        return f"{self.name} (port {self.port}):\n{text[-6000:]}"

    def beam_pid(self) -> int:
        """The Erlang VM's PID (the launched process is the script that waits for it)."""
        path = self.directory / "beam.pid"
        _until(lambda: path.exists() and path.read_text().strip().isdigit(), CTL_S,
               lambda: f"no pid file for {self.name}")  # fmt: skip
        return int(path.read_text().strip())

    def kill(self) -> None:
        """A crash: SIGKILL of the VM; the kernel resets its connections at once."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(CTL_S)

    def stop(self) -> None:
        """Gone for good, whatever its state: its whole process group, by our own PID."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(CTL_S)

    def ctl(self, *args: str, timeout: float = CTL_S) -> str:
        done = subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", self.name, "-q", *args],
            env=self._env(), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(
                f"rabbitmqctl -n {self.name} {' '.join(args)} failed ({done.returncode}):"
                f"\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def url(self, vhost: str = "", name: str | None = None) -> str:
        query = f"?name={name}" if name else ""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}{query}"


class RabbitCluster:
    """Nodes booted in parallel, then joined to the first (stop_app, join_cluster,
    start_app). `stop()` ends every node, whatever happened."""

    def __init__(self, nodes: Sequence[RabbitNode]) -> None:
        self.nodes = list(nodes)

    @classmethod
    def start(cls, directory: Path, scripts: Path, size: int = 3) -> RabbitCluster:
        run = secrets.token_hex(3)  # two runs on one machine never share a node name
        cookie = secrets.token_hex(20)
        cluster = cls([
            RabbitNode(scripts, directory / f"c{i}", f"aiotq-{run}-c{i}@localhost", cookie)
            for i in range(1, size + 1)
        ])  # fmt: skip
        try:
            for node in cluster.nodes:
                node.launch()
            for node in cluster.nodes:
                node.wait_up()
            seed = cluster.nodes[0]
            # stopped together, joined one at a time (two joins at once can leave a node
            # whose database does not start), started together
            with ThreadPoolExecutor(size) as pool:
                list(pool.map(lambda node: node.ctl("stop_app"), cluster.nodes[1:]))
                for node in cluster.nodes[1:]:
                    node.ctl("join_cluster", seed.name)
                list(pool.map(lambda node: node.ctl("start_app"), cluster.nodes[1:]))
            cluster.wait_whole()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def ask(self, *args: str) -> Any:
        """rabbitmqctl's JSON answer, from a node that is up."""
        return json.loads(self.any_up().ctl(*args, "--formatter", "json"))

    def running_nodes(self) -> set[str]:
        return set(self.ask("cluster_status")["running_nodes"])

    def wait_whole(self, timeout: float = BOOT_S) -> None:
        names = {node.name for node in self.nodes}
        _until(
            lambda: self.running_nodes() == names, timeout,
            lambda: f"running {sorted(self.running_nodes())}, not all of {sorted(names)}",
        )  # fmt: skip

    def any_up(self) -> RabbitNode:
        for node in self.nodes:
            if node.alive and node.listening():
                return node
        raise RuntimeError("no node of the cluster is up")

    def heal(self) -> None:
        """Every node up and in the cluster again: a killed one relaunched (its data dir
        rejoins it), a stopped app started."""
        for node in self.nodes:
            if not node.alive:
                node.launch()
            elif not node.listening():
                node.ctl("start_app")
        for node in self.nodes:
            node.wait_up()
        self.wait_whole()

    def urls(self, first: int = 0, vhost: str = "", name: str | None = None) -> str:
        """A failover list of every node (kombu's `;` form), starting at node `first`."""
        order = self.nodes[first:] + self.nodes[:first]
        return ";".join(node.url(vhost, name) for node in order)

    def connections(self) -> list[tuple[int, str]]:
        """(node's AMQP port, client's connection name) of every client connection."""
        found = []
        for row in self.ask("list_connections", "port", "client_properties"):
            props = {entry[0]: entry[2] for entry in row["client_properties"]}
            found.append((int(row["port"]), str(props.get("connection_name", ""))))
        return found

    def ports_of(self, name: str) -> set[int]:
        """The ports (one per node) that connections named `name` are connected to."""
        return {port for port, named in self.connections() if named == name}

    def leader(self, queue: str, vhost: str = "/") -> RabbitNode:
        """The running node that leads a quorum queue (after an election, once there is one)."""
        found: list[RabbitNode] = []

        def elected() -> bool:
            listed = self.ask("list_queues", "-p", vhost, "name", "leader")
            name = next((row["leader"] for row in listed if row["name"] == queue), None)
            found[:] = [n for n in self.nodes if n.name == name and n.listening()]
            return bool(found)

        _until(elected, CTL_S, lambda: f"no leader of {queue!r} on a running node")
        return found[0]

    def queue_types(self, vhost: str = "/") -> dict[str, str]:
        return {row["name"]: row["type"] for row in self.ask("list_queues", "-p", vhost,
                                                             "name", "type")}  # fmt: skip

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
