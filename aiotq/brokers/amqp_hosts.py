"""Several RabbitMQ nodes for one broker: kombu's failover list, and the connection that
moves along it.

A broker URL may name several nodes of one cluster as kombu and Celery write them,
`amqp://guest:guest@h1:5672//;amqp://guest:guest@h2:5673//` (a list in `broker_url` is
joined the same way). The first node that answers is used; after a lost connection (or a
failed attempt) the next one is tried, round the list in order, as kombu's `round-robin`
failover strategy does.

One mechanism does it: `FailoverConnection`, an aio-pika `RobustConnection` that changes
node. aio-pika reconnects to `self.url`, read afresh for every attempt, and calls
`_on_connection_close` both when a connection is lost and when an attempt fails
(`UnderlayConnection.connect`); overriding that one hook to move `url` on is enough, and
everything else stays aio-pika's own: its channels, their queues and consumers restored on
the new node, the `reopen_callbacks` the consumer relies on. (`_on_connected` only resets
the count and logs the move.) The next node is tried at once; after a whole round of
failures (the nodes refuse, or restoring the channels fails while a queue elects its
leader) it waits 0.25 s, doubling each round up to aio-pika's `reconnect_interval` (5 s,
or `?reconnect_interval=` in the first URL). With one URL it is aio-pika's
RobustConnection unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from yarl import URL

from .._backoff import Backoff
from ..exceptions import ConfigurationError
from ..urls import AMQP_SCHEMES, amqp_url, check_port, mask_password, scheme_of

log = logging.getLogger("aiotq.broker")


def split_urls(url: str) -> list[str]:
    """kombu's `;`-separated failover list, each URL read as `amqp_url` reads one."""
    urls = [part.strip() for part in url.split(";") if part.strip()]
    if not urls:
        raise ConfigurationError(f"no RabbitMQ URL in {mask_all(url)!r}")
    for part in urls:
        if scheme_of(part) not in AMQP_SCHEMES:  # one broker: every node speaks AMQP
            raise ConfigurationError(
                f"{mask_password(part)!r} in the failover list {mask_all(url)!r} is no "
                f"RabbitMQ URL (amqp://, amqps://)"
            )
        check_port(part, "broker")
    return [amqp_url(part) for part in urls]


def mask_all(url: str) -> str:
    """`mask_password` for each URL of a `;` list (it masks only the first)."""
    return ";".join(mask_password(part) for part in url.split(";"))


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that reconnects to the next node of `urls` (see the module)."""

    def __init__(self, urls: Sequence[str], first: int = 0, **kwargs: Any) -> None:
        self._urls = [URL(url) for url in urls]
        self._at = first
        self._failed = 0  # attempts failed (or connections lost) since the last success
        self._last: URL | None = None  # the node of the last connection made
        # the first URL's query (reconnect_interval, fail_fast...) applies to every node
        super().__init__(self._urls[first], **kwargs)
        # paused after each round of failures: 0.25 s, doubling up to reconnect_interval
        self._rounds = Backoff(initial=0.25, cap=max(float(self.reconnect_interval), 0.25))

    @property
    def node(self) -> str:
        """The node connected to, or to be tried next (password masked)."""
        return mask_password(str(self.url))

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        moving = len(self._urls) > 1 and not self._close_called
        if moving:  # set first, so that aio-pika's "reconnecting after Ns" line is right
            self._failed += 1
            self.reconnect_interval = 0 if self._failed % len(self._urls) else self._rounds.delay()
        await super()._on_connection_close(closing)  # logs the node that was lost
        if not moving or self._close_called:
            return
        if self.transport is None:
            # An attempt failed: aio-pika logs it (naming `url`) once this returns, then
            # waits `reconnect_interval`; the move is queued behind that log line.
            self.loop.call_soon(self._move_on)
        else:
            # A connection was lost: aio-pika's reconnect loop, woken by the call above,
            # runs once this returns, and dials the node chosen here (no await between).
            self._move_on()

    def _move_on(self) -> None:
        # not once connected again: aio-pika may have dialled the same node meanwhile (a
        # failed restore's close comes late) and got in
        if not self._close_called and not self.connected.is_set():
            self._at = (self._at + 1) % len(self._urls)
            self.url = self._urls[self._at]

    async def _on_connected(self) -> None:
        await super()._on_connected()  # channels restored on this node, or it raises
        if len(self._urls) == 1:
            return
        if self._last is not None and self._last != self.url:
            log.warning("RabbitMQ: reconnected to %s (was %s)", self.node,
                        mask_password(str(self._last)))  # fmt: skip
        self._last = self.url
        self._failed = 0
        self._rounds.reset()
        # aio-pika sleeps this long after a connection is made, before it heeds a loss:
        # with other nodes to go to, none (the pause is only between failed rounds)
        self.reconnect_interval = 0
