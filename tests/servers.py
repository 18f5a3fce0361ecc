"""redis-server processes of the suite's own: free port, temp dir, stopped by PID.

The suite never talks to a Redis it did not start, so it may flush, fill, pause or kill
these at will. `RedisServer.start(tmp_path, maxmemory="2mb")` passes any redis.conf option.
`SentinelSet.start(tmp_path)` is a master, its replica and three sentinels watching it;
`RedisCluster.start(tmp_path)` three masters with a replica each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process; `url(db)` to reach it, `pause()` / `resume()` (SIGSTOP /
    SIGCONT), `kill()` (SIGKILL) and `restart()` on the same port (no persistence: empty)."""

    def __init__(self, directory: Path, port: int, options: dict[str, Any]) -> None:
        self.directory = directory
        self.port = port
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, **options: Any) -> RedisServer:
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory, free_port(), options)
        server._launch()
        return server

    def _command(self) -> list[str]:
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory)]  # fmt: skip
        for key, value in self.options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        return command

    def _launch(self) -> None:
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start: "
                        f"{(self.directory / f'redis-{self.port}.log').read_text()[-500:]}"
                    ) from None
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, db: int = 0) -> str:
        password = self.options.get("requirepass")
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        password = self.options.get("requirepass")
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=password, socket_timeout=5
        )

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)  # a paused one cannot die until resumed
                self.proc.kill()
            self.proc.wait(10)

    def restart(self, **options: Any) -> None:
        """Kill it and start a fresh one on the same port: every key is gone. `options`
        change its redis.conf options (`replicaof="127.0.0.1 6380"`: back as a replica)."""
        self.kill()
        self.options.update(options)
        self._launch()

    def role(self) -> str:
        with self.client() as client:
            return str(client.info("replication")["role"])

    def stop(self) -> None:
        self.kill()


class Sentinel(RedisServer):
    """One sentinel (`redis-server sentinel.conf --sentinel`) watching `master` as `name`,
    quorum 2, the master down after 1 s without an answer: a failover in a few seconds."""

    def __init__(
        self, directory: Path, port: int, master: RedisServer, name: str, password: str | None
    ) -> None:
        super().__init__(directory, port, {"requirepass": password} if password else {})
        self.master = master
        self.name = name

    def _command(self) -> list[str]:
        binary = redis_binary()
        assert binary is not None, "redis-server is not installed"
        name, password = self.name, self.options.get("requirepass")
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.directory}",
            f"sentinel monitor {name} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {name} 1000",
            f"sentinel failover-timeout {name} 3000",
        ]  # fmt: skip
        if self.master.options.get("requirepass"):
            lines.append(f"sentinel auth-pass {name} {self.master.options['requirepass']}")
        if password:  # the sentinels' own password, which they also use among themselves
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        config = self.directory / f"sentinel-{self.port}.conf"  # sentinel rewrites it
        config.write_text("\n".join(lines) + "\n")
        return [binary, str(config), "--sentinel"]


class SentinelSet:
    """A master, one replica (`--replicaof`) and three sentinels, each on a free port in a
    directory of its own; `url()` is kombu's `sentinel://...;sentinel://...`."""

    def __init__(self, master: RedisServer, replica: RedisServer, sentinels: list[Sentinel]):
        self.nodes = [master, replica]
        self.sentinels = sentinels
        self.name = sentinels[0].name

    @classmethod
    def start(
        cls,
        directory: Path,
        name: str = "mymaster",
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> SentinelSet:
        auth: dict[str, Any] = {"repl_diskless_sync_delay": 0}  # a replica syncs at once
        if password:
            auth.update(requirepass=password, masterauth=password)
        started: list[RedisServer] = []
        try:
            master = RedisServer.start(directory / "master", **auth)
            started.append(master)
            replica = RedisServer.start(
                directory / "replica", replicaof=f"127.0.0.1 {master.port}", **auth
            )
            started.append(replica)
            sentinels = []
            for index in range(3):
                where = directory / f"sentinel-{index}"
                where.mkdir(parents=True, exist_ok=True)
                sentinel = Sentinel(where, free_port(), master, name, sentinel_password)
                sentinel._launch()
                started.append(sentinel)
                sentinels.append(sentinel)
            group = cls(master, replica, sentinels)
            group.wait_watched()
        except BaseException:
            for server in started:
                server.stop()
            raise
        return group

    def url(self, db: int = 0) -> str:
        auth = ""
        if self.nodes[0].options.get("requirepass"):
            auth = f":{self.nodes[0].options['requirepass']}@"
        first, *rest = self.sentinels
        return ";".join(
            [f"sentinel://{auth}127.0.0.1:{first.port}/{db}"]
            + [f"sentinel://127.0.0.1:{sentinel.port}" for sentinel in rest]
        )

    def _state(self, sentinel: Sentinel) -> dict[str, Any]:
        with sentinel.client() as client:
            state: dict[str, Any] = client.sentinel_master(self.name)
            state["replicas"] = client.sentinel_slaves(self.name)
            return state

    def master_port(self) -> int | None:
        """The master's port as a majority of live sentinels name it (None: no majority)."""
        ports: list[int] = []
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.exceptions.RedisError), sentinel.client() as client:
                ports.append(int(client.sentinel_get_master_addr_by_name(self.name)[1]))
        best = max(set(ports), key=ports.count) if ports else None
        return best if best is not None and ports.count(best) >= 2 else None

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def wait_watched(self, timeout: float = 30.0) -> None:
        """Until the replica is in sync and each sentinel knows the other two and a live
        replica: only then can they agree on a failover."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                replica = next(node for node in self.nodes if node.role() == "slave")
                with replica.client() as client:
                    if client.info("replication")["master_link_status"] != "up":
                        raise redis.exceptions.RedisError("the replica is not in sync yet")
                states = [self._state(sentinel) for sentinel in self.sentinels]
                if all(
                    int(state["num-other-sentinels"]) == len(self.sentinels) - 1
                    and any(not (r["is_sdown"] or r["is_odown"]) for r in state["replicas"])
                    for state in states
                ):
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"sentinels did not see each other and the replica in {timeout}s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes]:
            server.stop()


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli")


class RedisClusterSet:
    """A Redis Cluster of `masters` masters with a replica each (`--cluster-enabled yes`,
    made by `redis-cli --cluster create`), every node on free ports in a directory of its
    own. A node is declared failed after 1 s without an answer: a failover in seconds."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @classmethod
    def start(
        cls, directory: Path, masters: int = 3, password: str | None = None
    ) -> RedisClusterSet:
        cli = redis_cli_binary()
        assert cli is not None, "redis-cli is not installed"
        auth: dict[str, Any] = {"requirepass": password, "masterauth": password} if password else {}
        nodes: list[RedisServer] = []
        try:
            for index in range(2 * masters):
                nodes.append(
                    RedisServer.start(
                        directory / f"node-{index}",
                        cluster_enabled="yes",
                        cluster_config_file="nodes.conf",
                        cluster_port=free_port(),
                        cluster_node_timeout=1000,
                        repl_diskless_sync_delay=0,
                        **auth,
                    )
                )
            addresses = [f"127.0.0.1:{node.port}" for node in nodes]
            command = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1"]
            command += [
                "--cluster-yes",
                *(["-a", password, "--no-auth-warning"] if password else []),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-1500:]}")
            group = cls(nodes)
            group.wait_ok()
        except BaseException:
            for node in nodes:
                node.stop()
            raise
        return group

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def url(self) -> str:
        """`redis+cluster://` with every node as a seed."""
        password = self.nodes[0].options.get("requirepass")
        auth = f":{password}@" if password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def owner(self, key: str) -> RedisServer:
        """The master that holds `key`'s slot, as a live node sees the cluster now."""
        node = self.live()[0]
        with node.client() as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no master holds slot {slot}")

    def masters(self) -> list[RedisServer]:
        return [node for node in self.live() if node.role() == "master"]

    def _ok(self) -> bool:
        """Every live node says cluster_state:ok and every master has a replica in sync."""
        try:
            for node in self.live():
                with node.client() as client:
                    if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                        return False
                    info = client.info("replication")
                    if info["role"] == "slave" and info["master_link_status"] != "up":
                        return False
            return True
        except redis.exceptions.RedisError:
            return False

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ok():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster was not ok within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
