"""What the SQLite broker and backend share: the database file, its thread, its doorbells.

Every statement runs on one thread per Database (the event loop never waits on the file) in
WAL mode, so readers and one writer proceed together across processes. `synchronous=NORMAL`
survives a killed process (not a power cut) at a fraction of the cost of FULL.

Wake-ups without polling: a process waiting for messages or results binds a unix datagram
socket in a directory named after the database (a "doorbell"); a commit that a waiter may
care about sends one byte to every socket there. A stale socket (its process died) refuses
the byte and is removed. Waiters still re-check on a slow timer, so a lost byte costs latency,
never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ._loops import reset_after_fork
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    import sqlite3  # at run time only where a database opens: 1.7 MB a Redis worker never needs

T = TypeVar("T")

DEFAULT_FILE = "aiotq.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,          -- not delivered before this (delays, eta, retries)
    lease_ms INTEGER NOT NULL,        -- 0, or owned by `owner` until this
    owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    headers BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, priority DESC, id);
CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    reason TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_queue ON dead (queue, id);
CREATE TABLE IF NOT EXISTS results (
    task_id TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_ms);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (       -- the coordinator's key-value (presence, revokes)
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bus (      -- the broker's broadcasts (control, replies, events)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bus_topic ON bus (topic, id);
CREATE INDEX IF NOT EXISTS bus_expiry ON bus (expires_ms);
CREATE TABLE IF NOT EXISTS history (  -- task history (aiotq/history.py), newest by updated_ms
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    name TEXT,
    worker TEXT,
    queue TEXT,
    root_id TEXT,                     -- NULL for a lone task (its own root): a smaller index
    updated_ms INTEGER NOT NULL,
    search TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_updated ON history (updated_ms);
CREATE INDEX IF NOT EXISTS history_state ON history (state, updated_ms);
CREATE INDEX IF NOT EXISTS history_name ON history (name, updated_ms);
CREATE INDEX IF NOT EXISTS history_tree ON history (root_id) WHERE root_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS history_log (  -- records written, not yet indexed (history_sqlite)
    seq INTEGER PRIMARY KEY,
    records TEXT NOT NULL,            -- one write's records, a JSON array
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history_names (name TEXT PRIMARY KEY);  -- the filter's choices
CREATE TABLE IF NOT EXISTS history_minutes (
    minute_s INTEGER PRIMARY KEY,
    counts BLOB NOT NULL
);
"""


def default_url() -> str:
    """`sqlite:///<AIOTQ_HOME or the current directory>/aiotq.db`, as an absolute path."""
    home = Path(os.environ.get("AIOTQ_HOME") or ".").expanduser().resolve()
    return f"sqlite:///{home / DEFAULT_FILE}"


def path_of(url: str) -> Path:
    """`sqlite:///rel/x.db` is relative to the current directory, `sqlite:////abs/x.db` absolute
    (SQLAlchemy's reading)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"bad SQLite URL {url!r}: expected sqlite:///relative/path.db or sqlite:////abs/path.db"
        )
    return Path(rest[1:]).expanduser().resolve()


# SQLite's primary result codes that pass: another process holds the lock past our busy
# timeout, the disk is full or failed for a moment, memory ran short. Retried, like a lost
# connection; every other code (too big, corrupt, constraint) is final for that statement.
PASSING_CODES = frozenset(
    {5, 6, 7, 8, 10, 13, 15}
)  # BUSY LOCKED NOMEM READONLY IOERR FULL PROTOCOL


class Database:
    """One connection on one thread of its own; `run(fn)` calls fn(connection) there.

    sqlite3's errors never leave `run()`: they become `errors[0]` (the side's Unavailable:
    retried by the caller) or `errors[1]` (its final error), naming the file."""

    def __init__(
        self,
        url: str,
        busy_timeout_s: float = 30.0,
        errors: tuple[type[Exception], type[Exception]] = (RuntimeError, RuntimeError),
    ) -> None:
        self.path = path_of(url)
        self._busy_timeout_s = busy_timeout_s
        self._unavailable, self._final = errors
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="aiotq-sqlite")
        self._connection: sqlite3.Connection | None = None
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a fork's child: the executor's thread did not come along (a statement would
        wait for it for ever) and SQLite forbids using a connection opened before a fork,
        or closing it there. Start afresh; the parent's two are kept, never touched."""
        self._inherited = (self._executor, self._connection)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="aiotq-sqlite")
        self._connection = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        import sqlite3

        try:
            if self._connection is None:
                self._connection = self._open()
            return fn(self._connection)
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc

    def _translated(self, exc: sqlite3.Error) -> Exception:
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        if code is not None and code & 0xFF in PASSING_CODES:
            if code & 0xFF in (5, 6):
                return self._unavailable(
                    f"SQLite database {self.path} is locked by another process (waited"
                    f" {self._busy_timeout_s:g}s, sqlite_busy_timeout_s): {exc}"
                )
            return self._unavailable(f"SQLite database {self.path}: {name}: {exc}")
        return self._final(f"SQLite database {self.path} refused: {name}: {exc}")

    def _open(self) -> sqlite3.Connection:
        import sqlite3

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            with transaction(connection):  # several processes may create it at once
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
        except BaseException:
            connection.close()  # opened again on the next call (a lock may have passed)
            raise
        return connection

    async def aclose(self) -> None:
        def close(connection: sqlite3.Connection) -> None:
            connection.close()
            self._connection = None

        if self._connection is not None:
            with contextlib.suppress(RuntimeError):  # executor already shut down
                await self.run(close)


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock up front (no deadlocking upgrades)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class Doorbell:
    """Wake waiters of one database and channel ("messages", "results") in every process."""

    def __init__(self, path: Path, channel: str) -> None:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        # under the temp dir, not beside the database: a unix socket path is at most ~104 bytes
        self.directory = Path(tempfile.gettempdir()) / f"aiotq-{digest}" / channel
        self._sender: socket.socket | None = None
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Send one byte to every listener (called from the database thread after a commit)."""
        if not hasattr(socket, "AF_UNIX"):
            return
        with self._lock:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            try:
                entries = list(os.scandir(self.directory))
            except FileNotFoundError:
                return
            for entry in entries:
                try:
                    self._sender.sendto(b"!", entry.path)
                except BlockingIOError:
                    pass  # its buffer is full of unread rings: it is awake anyway
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)  # its process is gone
                except OSError:
                    pass

    def listen(self) -> Listener:
        return Listener(self.directory)

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None


class Listener:
    """One bound socket on the running loop; `wait()` returns when rung or after a timeout.

    Use: `listener.arm()`, then look at the database, then `await listener.wait(t)`: a ring
    between the two is not lost."""

    def __init__(self, directory: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._sock: socket.socket | None = None
        if hasattr(socket, "AF_UNIX"):
            directory.mkdir(parents=True, exist_ok=True)
            self._path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.bind(str(self._path))
            self._loop.add_reader(self._sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock.recv(64):
                pass
        self._event.set()

    def arm(self) -> None:
        self._event.clear()

    def wake(self) -> None:
        """Ring this listener from its own loop."""
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        if self._sock is None:  # no unix sockets here (Windows): fall back to a short poll
            timeout_s = min(timeout_s, 0.05)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._event.wait()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(ValueError, RuntimeError):  # loop already closed
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
