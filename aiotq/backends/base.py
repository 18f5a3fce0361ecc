"""The contracts of the stores behind the tasks: one job per protocol.

- `ResultStore` keeps results: opaque bytes per task id, with a TTL, that waiters can watch
  (the result layer encodes and decodes).
- `Coordinator` keeps what processes agree on: atomic counters (chords), leases (beat's
  leader), a small key-value with a TTL (worker presence, durable revokes) and rate-limit
  slots (`rate_limit_scope="global"`), in a key space of its own, so a key never meets a
  result of the same name.
- `ReplyRouting` is rpc://'s extra: results travel to the caller's own queue instead of
  being kept. Checked once, with `reply_routing()`, never looked up by attribute name.

`Backend` is a class that is both a ResultStore and a Coordinator (memory://, sqlite://,
redis://); the name stays so that existing imports keep working while callers move to the
two protocols. rpc:// is a ResultStore only: it has no Coordinator (`make_coordinator()`
returns None for it).

One object may serve several event loops (a worker's and the sync portal's), so whatever an
implementation holds per loop (clients, listeners, inboxes) lives in an `aiotq._loops.PerLoop`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..history import HistoryStore


class ResultStore(Protocol):
    url: str

    async def connect(self) -> None: ...

    async def aclose(self) -> None:
        """Close this loop's clients; idempotent."""

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Store each (task_id, data) with a TTL and wake its watchers; one round trip."""

    async def get(self, task_id: str) -> bytes | None: ...

    def watch(self, task_id: str) -> AsyncIterator[bytes]:
        """The current value (if any), then every value stored after, without polling where
        the store can notify. Subscribes before reading, so no store is missed."""
        ...

    async def forget(self, task_id: str) -> None: ...


@runtime_checkable
class Coordinator(Protocol):
    """Atomic across processes. TTLs are in seconds and start again at each write."""

    async def incr(self, key: str, ttl_s: float) -> int:
        """Atomic counter (chords): add one, set the TTL, return the new value."""
        ...

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease for `ttl_s` (beat's leader): True when `holder` has it,
        False while another holder's lease runs."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up now if `holder` has it, so another can take it at once."""

    async def holder(self, name: str) -> str | None:
        """Who holds the named lease now (None when nobody does): the dashboard's beat."""
        ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Set `key` to `value` until `ttl_s` from now (replacing any value and TTL)."""

    async def fetch(self, key: str) -> bytes | None:
        """The value of `key`, or None when it was never put, was deleted or expired."""
        ...

    async def delete(self, key: str) -> None: ...

    async def scan(self, prefix: str) -> dict[str, bytes]:
        """Every live key starting with `prefix`, with its value: for small sets (worker
        presence, revokes), not for a million keys."""
        ...

    async def reserve(
        self, key: str, interval_s: float, count: int, horizon_s: float
    ) -> tuple[int, float]:
        """A start rate shared by processes (GCRA without burst): atomically reserve up to
        `count` start slots `interval_s` apart under `key`, after every slot reserved there
        before, none more than `horizon_s` from now (`reserve_slots` is the arithmetic).
        Returns (granted, wait_s): the first granted slot is `wait_s` from now and the others
        follow `interval_s` apart; with granted 0 nothing was reserved, and an ask `wait_s`
        from now gets a slot. The store's own clock decides, so hosts' clocks may differ."""
        ...


class Backend(ResultStore, Coordinator, Protocol):
    """Both protocols in one object, as memory://, sqlite:// and redis:// are."""


@runtime_checkable
class ReplyRouting(Protocol):
    """rpc://: the producer names its reply queue in each message it sends, the worker notes
    where a task's states go, and nothing is kept for anyone else (`keeps_results` False:
    chains, chords and beat need a store that keeps results)."""

    keeps_results: bool

    async def reply_to(self) -> str:
        """This process's and loop's reply queue, for the message's `reply_to`."""
        ...

    def expect_reply(self, task_id: str, reply_to: str) -> None:
        """The worker received a message naming its caller's queue."""


@runtime_checkable
class HasHistory(Protocol):
    """A store that can keep task history (memory://, sqlite://, redis://)."""

    def task_history(self, max_tasks: int, max_age_s: float) -> HistoryStore: ...


def make_history(store: ResultStore, max_tasks: int, max_age_s: float) -> HistoryStore | None:
    """The task history kept beside a store's results; None for rpc:// (or max_tasks 0)."""
    if max_tasks <= 0 or not isinstance(store, HasHistory):
        return None
    return store.task_history(max_tasks, max_age_s)


def reserve_slots(
    next_s: float, now_s: float, interval_s: float, count: int, horizon_s: float
) -> tuple[float, int, float]:
    """`Coordinator.reserve` on a stored next free slot `next_s` (GCRA's theoretical arrival
    time; in the past when idle, and no burst is saved up then): (the new next free slot,
    granted, wait_s). Redis does the same in its Lua script."""
    ahead = max(next_s - now_s, 0.0)
    if ahead > horizon_s:
        return next_s, 0, ahead - horizon_s
    granted = max(1, min(count, int((horizon_s - ahead) / interval_s) + 1))
    return now_s + ahead + granted * interval_s, granted, ahead


def reply_routing(store: ResultStore) -> ReplyRouting | None:
    """The store's reply routing, if it has one: check once (e.g. when the App is built)."""
    return store if isinstance(store, ReplyRouting) else None
