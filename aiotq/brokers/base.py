"""The Broker contract: small on purpose. Registry, routing and settings stay out of it.

A delivery carries its own ack. Delayed delivery is the broker's job: a delayed message
is durable in the broker, not held in worker memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

# A message handed out this many times has been running in two workers that died (or has
# been returned twice): it may be what killed them. Brokers hand such a message out alone
# (not in a batch whose other members would be counted with it), and the worker runs it
# alone, so a poison message is counted toward its delivery limit without the good ones.
SUSPECT_DELIVERIES = 3


@runtime_checkable
class Delivery(Protocol):
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool
    delivery_count: int  # 1 on the first delivery; the worker dead-letters past the limit

    def finished(self) -> None:
        """The worker is done running it and has queued its result and ack: it no longer
        counts against prefetch. Idempotent; ack and reject imply it."""

    async def ack(self) -> None:
        """Done with the message: the broker forgets it."""

    async def reject(self, requeue: bool, reason: str | None = None) -> None:
        """Give the message back (`requeue=True`) or dead-letter it with the reason."""


class Broker(Protocol):
    url: str

    async def connect(self) -> None:
        """Connect (idempotent). Raises BrokerConnectionError naming the masked URL."""

    async def aclose(self) -> None:
        """Close everything; idempotent. Unacknowledged deliveries go back to their queue."""

    async def declare(self, queues: Sequence[str]) -> None: ...

    async def publish(
        self,
        queue: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        delay_s: float = 0.0,
        priority: int | None = None,
    ) -> None: ...

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge several deliveries of this broker in one round trip where it can."""

    def consume(self, queues: Sequence[str], prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries from `queues`, at most `prefetch` fetched and not yet finished."""
        ...

    async def tick(self) -> None:
        """Upkeep from the worker's scheduler tick: move due delayed messages, keep leases."""

    async def purge(self, queue: str) -> int: ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[tuple[bytes, str]]:
        """Dead-lettered bodies of a queue with their reasons, oldest first."""
        ...

    async def requeue_dead(self, queue: str, limit: int = 100) -> int:
        """Move up to `limit` dead letters (oldest first) back to the queue; return how many."""
        ...


class Prefetch:
    """A consumer's prefetch window: messages fetched and not yet finished.

    A message leaves the window when the worker has queued its outcome, not when its ack
    lands: the next message is fetched while the last one's result is still being written
    (one store and one ack round trip per batch), instead of every slot waiting for both.
    Finished-but-unacknowledged messages stay bounded by the result publisher's own queue.
    """

    __slots__ = ("_wake", "out", "size")

    def __init__(self, size: int, wake: Callable[[], None]) -> None:
        self.size = size
        self.out = 0
        self._wake = wake

    def free(self) -> int:
        return self.size - self.out

    def take(self) -> Prefetch:
        self.out += 1
        return self

    def give(self) -> None:
        self.out -= 1
        self._wake()


class InWindow:
    """Mixin for deliveries: `finished()` gives the prefetch slot back, once. Each delivery
    class declares the `_window` field (slotted dataclasses cannot inherit one)."""

    __slots__ = ()
    _window: Prefetch | None

    def finished(self) -> None:
        window = self._window
        self._window = None  # type: ignore[misc]  # the subclass's slot (mypy sees only ours)
        if window is not None:
            window.give()
