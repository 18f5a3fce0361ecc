"""Task history in the Redis result backend.

    {aiotq:h}:t:<id>          the record (JSON), with the history's max age as TTL
    {aiotq:h}:all             sorted set: id -> updated (ms)
    {aiotq:h}:state:<S>       the same per state, per name and per root id (a canvas)
    {aiotq:h}:name:<n> ...
    {aiotq:h}:indexes         the index sets by state and name (for trimming; a root index
                              expires with the history's max age instead)
    {aiotq:h}:names           every task name seen
    {aiotq:h}:m:<minute>      per-minute counters (a hash: HINCRBY), with the max age as TTL

Every key shares the hash tag `{aiotq:h}`, so it works on Cluster: one slot holds the history
(its scripts and multi-key reads never cross slots; pipelines there are not transactions,
and nothing here needs one). A tick's finished records cost
one round trip (one script writes them and their indexes). A page is one
ZREVRANGEBYSCORE on the narrowest index (the intersection of several, kept 10 s, when more
than one filter is given); `q` (a substring), `worker` and `queue` read the newest matches
of the indexed filters in batches and keep those that match, looking at most
`Q_SCAN_LIMIT` records. Trimming (every 30 s) cuts
every index below the oldest kept score; an id whose record is gone is dropped when met.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from redis import exceptions as redis_errors

from .._redis import LoopClients
from ..exceptions import BackendConnectionError
from ..history import (
    BUCKETS,
    Minute,
    MinuteCounts,
    Page,
    TaskQuery,
    TaskRecord,
    matches,
    minute_counts,
)

P = "{aiotq:h}"
TRIM_EVERY_S = 30.0
Q_SCAN_LIMIT = 20_000
BATCH = 500
_encode = msgspec.json.Encoder().encode  # JSON: the write script decodes the batch (cjson)
_decode_record = msgspec.json.Decoder(TaskRecord).decode


# ARGV: prefix, ttl_ms, and one JSON array of [id, score, record (JSON text), index key...]:
# one argument for the whole batch (redis-py packs each argument in Python: 15,000 of them
# per tick cost the worker more than its tasks did)
# On Redis 7 the shebang makes the server refuse the script before it runs when memory is
# full (deny-oom); without it the script would run, decode the batch into the Lua heap, and
# fail at its first write, and the garbage kept a full Redis full after room was made.
SHEBANG = "#!lua\n"
WRITE = """
local p, ttl = ARGV[1], ARGV[2]
for _, item in ipairs(cjson.decode(ARGV[3])) do
  local id, score = item[1], item[2]
  redis.call('SET', p .. ':t:' .. id, item[3], 'PX', ttl)
  for j = 4, #item do
    redis.call('ZADD', item[j], score, id)
    if string.find(item[j], ':root:', 1, true) then redis.call('PEXPIRE', item[j], ttl) end
  end
end
-- the decoded batch is garbage now: free it, or it counts against maxmemory until the next
-- script (a full Redis refuses scripts: it would stay full)
collectgarbage()
return 0
"""


def _indexes(record: TaskRecord) -> list[str]:
    """By time, by state and by name (and by root for a canvas): the filters a dashboard
    uses most. Worker and queue filters read the newest of these instead of an index of
    their own: each index is one more write per task on the server."""
    found = [f"{P}:all"]
    if record.state != "SUCCESS":  # most tasks: a SUCCESS filter reads `all` instead
        found.append(f"{P}:state:{record.state}")
    if record.name:
        found.append(f"{P}:name:{record.name}")
    if record.root_id and record.root_id != record.id:  # a lone task is no tree
        found.append(f"{P}:root:{record.root_id}")
    return found


class RedisHistory:
    def __init__(self, clients: LoopClients, max_tasks: int, max_age_s: float) -> None:
        self._clients = clients
        self.max_tasks = max_tasks
        self.max_age_s = max_age_s
        self._trimmed_at = 0.0
        self.trim_every_s = TRIM_EVERY_S
        self._sha: str | None = None  # the write script, loaded on first use
        self._known_keys: set[str] = set()  # index sets and names already registered
        self._known_names: set[str] = set()

    async def write(self, records: Sequence[TaskRecord]) -> None:
        if not records:
            return
        ttl_ms = int(self.max_age_s * 1000)
        items: list[list[Any]] = []
        new_keys: set[str] = set()
        new_names: set[str] = set()
        for record in records:
            keys = _indexes(record)
            score = str(int(record.updated_at_s * 1000))
            items.append([record.id, score, _encode(record).decode(), *keys])
            # the trim walks these: by state and by name (a few); root indexes expire alone
            new_keys.update(k for k in keys if ":root:" not in k and k not in self._known_keys)
            if record.name and record.name not in self._known_names:
                new_names.add(record.name)
        async with self._clients.guarded(BackendConnectionError):
            client: Any = await self._clients.client()
            try:
                await self._send(client, [P, ttl_ms, _encode(items)], records, new_keys, new_names)
            except redis_errors.NoScriptError:  # the server restarted or flushed its scripts
                self._sha = None
                await self._send(client, [P, ttl_ms, _encode(items)], records, new_keys, new_names)
        self._known_keys.update(new_keys)
        self._known_names.update(new_names)
        if time.monotonic() - self._trimmed_at > self.trim_every_s:
            self._trimmed_at = time.monotonic()
            await self._trim()

    async def _send(
        self,
        client: Any,
        batch: list[Any],
        records: Sequence[TaskRecord],
        new_keys: set[str],
        new_names: set[str],
    ) -> None:
        if self._sha is None:
            info = await client.info("server")
            major = int(str(info.get("redis_version", "6")).split(".")[0])
            self._sha = await client.script_load(SHEBANG + WRITE if major >= 7 else WRITE)
        ttl_ms = batch[1]
        pipe = client.pipeline(transaction=False)
        # one script for the batch: the records and their indexes without a command each
        # (EVALSHA straight: redis-py's Script in a pipeline asks SCRIPT EXISTS each time)
        # (by name: redis-py's Cluster pipelines refuse pipe.evalsha; one slot, `{aiotq:h}`)
        pipe.execute_command("EVALSHA", self._sha, 1, f"{P}:all", *batch)
        if new_keys:
            pipe.sadd(f"{P}:indexes", *new_keys)
        if new_names:
            pipe.sadd(f"{P}:names", *new_names)
        for minute_s, counts in minute_counts(records).items():
            key = f"{P}:m:{minute_s}"  # a hash of counters: HINCRBY adds atomically
            for field in ("succeeded", "failed", "retried", "revoked"):
                if getattr(counts, field):
                    pipe.hincrby(key, field, getattr(counts, field))
            for index, count in enumerate(counts.buckets):
                if count:
                    pipe.hincrby(key, f"b{index}", count)
            pipe.pexpire(key, ttl_ms + 60_000)
        await pipe.execute()

    async def _trim(self) -> None:
        async with self._clients.guarded(BackendConnectionError):
            client: Any = await self._clients.client()
            cut_ms = int((time.time() - self.max_age_s) * 1000)
            over = await client.zrevrange(
                f"{P}:all", self.max_tasks, self.max_tasks, withscores=True
            )
            if over:
                cut_ms = max(cut_ms, int(over[0][1]) + 1)
                doomed = await client.zrangebyscore(f"{P}:all", "-inf", cut_ms - 1)
                for start in range(0, len(doomed), BATCH):
                    await client.delete(
                        *[f"{P}:t:{i.decode()}" for i in doomed[start : start + BATCH]]
                    )
            indexes = await client.smembers(f"{P}:indexes")
            pipe = client.pipeline(transaction=False)
            for key in indexes:
                pipe.zremrangebyscore(key, "-inf", cut_ms - 1)
            await pipe.execute()

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._clients.guarded(BackendConnectionError):
            client: Any = await self._clients.client()
            data = await client.get(f"{P}:t:{task_id}")
        return _decode_record(data) if data else None

    async def search(self, query: TaskQuery) -> Page:
        page = await self._search(query)
        if query.root_id and query.page <= 1:  # the root is in no root index: add it
            root = await self.get(query.root_id)
            if (
                root is not None
                and matches(root, query)
                and root.id not in {r.id for r in page.records}
            ):
                page.records.insert(0, root)
                page.total += 1
        return page

    async def _search(self, query: TaskQuery) -> Page:
        state = query.state if query.state != "SUCCESS" else None
        indexed = (("state", state), ("name", query.name), ("root", query.root_id))
        filters = [f"{P}:{kind}:{value}" for kind, value in indexed if value]
        low = int(query.since_s * 1000) if query.since_s is not None else "-inf"
        high = int(query.until_s * 1000) if query.until_s is not None else "+inf"
        start = (max(query.page, 1) - 1) * query.per_page
        async with self._clients.guarded(BackendConnectionError):
            client: Any = await self._clients.client()
            key = filters[0] if len(filters) == 1 else f"{P}:all"
            if len(filters) > 1:
                key = f"{P}:tmp:{uuid.uuid4().hex}"
                pipe = client.pipeline(transaction=False)
                pipe.zinterstore(key, filters, aggregate="MAX")
                pipe.pexpire(key, 10_000)
                await pipe.execute()
            if not (query.q or query.worker or query.queue or query.state == "SUCCESS"):
                total = await client.zcount(key, low, high)
                ids = await client.zrevrangebyscore(key, high, low, start=start, num=query.per_page)
                records = await self._records(client, key, ids, query)
                return Page(records=records, total=int(total), page=query.page,
                            per_page=query.per_page)  # fmt: skip
            return await self._scan(client, key, query, low, high, start)

    async def _scan(
        self, client: Any, key: str, query: TaskQuery, low: Any, high: Any, start: int
    ) -> Page:
        """`q`, `worker`, `queue`: the newest records of the indexed filters that match
        (at most Q_SCAN_LIMIT looked at; `total` counts the matches among those)."""
        found: list[TaskRecord] = []
        offset = 0
        while offset < Q_SCAN_LIMIT:
            ids = await client.zrevrangebyscore(key, high, low, start=offset, num=BATCH)
            if not ids:
                break
            offset += len(ids)
            found.extend(await self._records(client, key, ids, query))
        return Page(records=found[start : start + query.per_page], total=len(found),
                    page=query.page, per_page=query.per_page)  # fmt: skip

    async def _records(
        self, client: Any, key: str, ids: list[bytes], query: TaskQuery
    ) -> list[TaskRecord]:
        """The records of `ids` that still match: an id whose record expired, or whose
        later run moved it to another state (a retry that then succeeded), is dropped from
        the index as it is met."""
        if not ids:
            return []
        state_index = f"{P}:state:" in key  # a record there in another state moved on
        data = await client.mget([f"{P}:t:{i.decode()}" for i in ids])
        found, stale = [], []
        for task_id, blob in zip(ids, data, strict=True):
            record = _decode_record(blob) if blob is not None else None
            if record is None or (state_index and record.state != query.state):
                stale.append(task_id)
            elif matches(record, query):
                found.append(record)
        if stale and not key.startswith(f"{P}:tmp:"):
            await client.zrem(key, *stale)
        return found

    async def names(self) -> list[str]:
        async with self._clients.guarded(BackendConnectionError):
            client: Any = await self._clients.client()
            names = await client.smembers(f"{P}:names")
        return sorted(n.decode() for n in names)

    async def minutes(self, since_s: float) -> list[Minute]:
        first = int(since_s) // 60 * 60
        now = int(time.time()) // 60 * 60
        # One minute past now too: a worker whose clock runs ahead writes there.
        starts = list(range(first, now + 120, 60))[-1441:]  # a day at most
        async with self._clients.guarded(BackendConnectionError):
            pipe = (await self._clients.client()).pipeline(transaction=False)
            for minute_s in starts:
                pipe.hgetall(f"{P}:m:{minute_s}")
            hashes = await pipe.execute()
        found = []
        for minute_s, fields in zip(starts, hashes, strict=True):
            if not fields:
                continue
            values = {k.decode(): int(v) for k, v in fields.items()}
            counts = MinuteCounts(
                succeeded=values.get("succeeded", 0), failed=values.get("failed", 0),
                retried=values.get("retried", 0), revoked=values.get("revoked", 0),
                buckets=[values.get(f"b{i}", 0) for i in range(len(BUCKETS) + 1)],
            )  # fmt: skip
            found.append(counts.minute(minute_s))
        return found
