"""The Redis broker's bus (see bus.py): one capped stream per topic.

    aiotq:bus:<topic>    stream, field `b` = body; XADD MAXLEN ~keep, PEXPIRE ttl per post
                         (one key each: on a Cluster, a topic is one slot's)

A subscriber reads with XREAD BLOCK from the last id it saw, on a connection of its own: a
post reaches it at once, and after a lost connection it resumes from that id, so it sees
what was posted meanwhile (what the stream still keeps). No consumer group: every
subscriber reads everything.
"""

from __future__ import annotations

from typing import Any

from .._redis import LoopClients, close
from ..exceptions import BrokerConnectionError

BLOCK_CAP_S = 5.0  # the longest XREAD BLOCK; the reader's socket timeout is above it


def bus_key(topic: str) -> str:
    return f"aiotq:bus:{topic}"


class RedisBus:
    def __init__(self, clients: LoopClients) -> None:
        self._clients = clients

    async def post(self, topic: str, body: bytes, *, keep: int, ttl_s: float) -> None:
        key = bus_key(topic)
        async with self._clients.guarded(BrokerConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            pipe.xadd(key, {"b": body}, maxlen=keep, approximate=True)
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()

    async def subscribe(self, topic: str, *, replay: bool = False) -> _StreamReader:
        async with self._clients.guarded(BrokerConnectionError):
            client = await self._clients.dedicated(socket_timeout_s=BLOCK_CAP_S + 4)
        reader = _StreamReader(self._clients, bus_key(topic), client)
        try:
            if not replay:  # from the newest entry now: a post after this returns is seen
                async with self._clients.guarded(BrokerConnectionError):
                    newest = await reader.client.xrevrange(reader.key, count=1)
                if newest:
                    reader.last = newest[0][0]
        except BaseException:
            await reader.aclose()
            raise
        return reader


class _StreamReader:
    def __init__(self, clients: LoopClients, key: str, client: Any) -> None:
        self._clients = clients
        self.key = key
        self.last: bytes | str = "0-0"
        self.client: Any = client

    async def next(self, timeout_s: float) -> list[bytes]:
        block_ms = max(1, int(min(timeout_s, BLOCK_CAP_S) * 1000))
        async with self._clients.guarded(BrokerConnectionError):
            answer = await self.client.xread({self.key: self.last}, count=1000, block=block_ms)
        bodies: list[bytes] = []
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                self.last = entry_id
                body = fields.get(b"b")
                if body is not None:
                    bodies.append(body)
        return bodies

    async def aclose(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await close(client)
