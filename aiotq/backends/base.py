"""The result Backend contract. Backends store opaque bytes; the result layer encodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol


class Backend(Protocol):
    """Optional, for rpc://: `keeps_results = False`, `async reply_to() -> str` (the producer
    names its reply queue in each message) and `expect_reply(task_id, reply_to)` (the worker
    notes where a task's states go)."""

    url: str

    async def connect(self) -> None: ...

    async def aclose(self) -> None: ...

    async def store(self, items: Sequence[tuple[str, bytes]], ttl_s: float) -> None:
        """Store each (task_id, data) with a TTL and wake its watchers; one round trip."""

    async def get(self, task_id: str) -> bytes | None: ...

    def watch(self, task_id: str) -> AsyncIterator[bytes]:
        """The current value (if any), then every value stored after, without polling where
        the store can notify. Subscribes before reading, so no store is missed."""
        ...

    async def forget(self, task_id: str) -> None: ...

    async def incr(self, key: str, ttl_s: float) -> int:
        """Atomic counter (chords): add one, set the TTL, return the new value."""
        ...

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease for `ttl_s` (beat's leader): True when `holder` has it,
        False while another holder's lease runs. Atomic across processes."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up now if `holder` has it, so another can take it at once."""
