"""What happens after a task's result is stored: callbacks, a chain's next step, a chord's count.

The result publisher runs these after the store and before the ack, so a worker that dies in
between has its message redelivered and the follow-ups still happen (at least once). A chord
tolerates the duplicate count that redelivery can cause: it fires when the count reaches its
size *and* every member's result is ready, and a second counter makes the firing happen once.

A unique job's key (aiotq/unique.py) is given up here when the task is done, and renewed
when it retries.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..canvas import Signature, chain, chord, group, last_task
from ..exceptions import Transient
from ..mapping import ACCUMULATE
from ..protocol import (
    CODECS,
    ChordRef,
    Failure,
    Message,
    ResultRecord,
    SignatureData,
    decode_record,
    errbacks_of,
    group_meta_key,
    result_ids,
    terminal_refs,
)
from ..unique import HEADER as UNIQUE_HEADER
from ..unique import TTL_HEADER as UNIQUE_TTL_HEADER
from ..unique import held

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("aiotq.worker")


def has_followups(message: Message) -> bool:
    return bool(message.link or message.link_error or message.chain or message.chord)


def children_of(message: Message) -> list[str]:
    """The result ids of what this task's success sends (links, the chain's next step), chosen
    now so the parent's stored result can list them (`AsyncResult.children`)."""
    for link in message.link:
        link.options.setdefault("task_id", str(uuid.uuid4()))
    ids = [i for link in message.link for i in result_ids(link)]
    return ids + (result_ids(message.chain[0]) if message.chain else [])


class FollowUps:
    def __init__(self, app: App) -> None:
        self.app = app
        settings = app.conf.settings
        self.ttl_s = settings.result_expires_s
        self.codec = CODECS[settings.result_serializer]

    async def after_success(self, message: Message, value: Any) -> None:
        with self.app.producer.tracing.resumed(message):  # the same trace as the run
            await self._after_success(message, value)

    async def _after_success(self, message: Message, value: Any) -> None:
        for link in message.link:
            await self._send(link.task, Signature.from_data(link, self.app), (value,))
        if message.chain:
            step = Signature.from_data(message.chain[0], self.app)
            await self._send(
                "the next step of a chain", step, (value,),
                chain=message.chain[1:], parent_id=message.id, root_id=message.root_id,
            )  # fmt: skip
        if message.chord is not None:
            await self._chord_step(message.chord)

    async def replace(self, message: Message, replacement: Signature) -> None:
        """`raise self.replace(sig)` (Celery's): `sig` runs instead of this task and inherits
        what came after it (callbacks, error callbacks, the rest of its chain, its chord);
        its last task takes this task's id, so a result already handed out gets its value."""
        with self.app.producer.tracing.resumed(message):
            sig = replacement.clone()
            if isinstance(sig, group):  # a group's list becomes one value, as in Celery
                sig = chord(sig, self.app.signature(ACCUMULATE, kwargs={"index": 0}))
            for link in message.link:
                sig.link(Signature.from_data(link, self.app))
            for errback in message.link_error:
                sig.link_error(Signature.from_data(errback, self.app))
            last = last_task(sig)
            last.options["task_id"] = message.id
            if UNIQUE_HEADER in message.headers:  # the key is given up when the last one ends
                last.options["headers"] = {
                    **(last.options.get("headers") or {}),
                    UNIQUE_HEADER: message.headers[UNIQUE_HEADER],
                    UNIQUE_TTL_HEADER: message.headers.get(UNIQUE_TTL_HEADER),
                }
            if message.chain:
                steps = [Signature.from_data(step, self.app) for step in message.chain]
                sig = chain(sig, *steps, app=self.app)
            if message.chord is not None:
                sig._report_to(message.chord)
            await sig.aapply_async(parent_id=message.id, root_id=message.root_id or message.id)

    async def release_unique(
        self, message: Message, then: Callable[[], Awaitable[None]] | None
    ) -> None:
        """The task is done: its unique key is free for the next send (only if it still
        holds it: after a TTL lapse another task may), then `then`, the other follow-ups."""
        key, coordinator = held(message.headers), self.app.coordinator
        if key is not None and coordinator is not None:
            try:
                await coordinator.release(key[0], message.id)
            except Transient:
                raise  # run again by the publisher, the message unacknowledged meanwhile
            except Exception as exc:  # the TTL frees it
                log.error("could not give up unique key %s of task %s: %r", key[0], message.id,
                          exc)  # fmt: skip
        if then is not None:
            await then()

    async def keep_unique(
        self, message: Message, countdown_s: float, then: Callable[[], Awaitable[None]]
    ) -> None:
        """A retry: the task is queued again, so its key is held until the retry is due and
        for its TTL after that (renewed, if it still holds it), then `then` sends it."""
        key, coordinator = held(message.headers), self.app.coordinator
        if key is not None and coordinator is not None:
            name, ttl_s = key
            ttl_s = (ttl_s or self.app.conf.settings.task_unique_ttl_s) + countdown_s
            try:
                if not await coordinator.lease(name, message.id, ttl_s):
                    log.warning("unique key %s lapsed while task %s ran; another task holds it",
                                name, message.id)  # fmt: skip
            except Transient:
                raise
            except Exception as exc:  # not a reason to lose the retry
                log.error("could not renew unique key %s of task %s: %r", name, message.id,
                          exc)  # fmt: skip
        await then()

    async def after_failure(self, message: Message, record: ResultRecord) -> None:
        with self.app.producer.tracing.resumed(message):
            await self._after_failure(message, record)

    async def _after_failure(self, message: Message, record: ResultRecord) -> None:
        error = str(record.failure)
        for errback in message.link_error:
            await self._send(
                errback.task, Signature.from_data(errback, self.app), (message.id, error)
            )
        for step in message.chain:  # the chain stops here; its later results show this failure
            await self._fail_signature(step, record)
        if message.chord is not None:
            await self._chord_step(message.chord)

    async def _chord_step(self, ref: ChordRef) -> None:
        backend, coordinator = self.app.backend, self.app.coordinator
        if coordinator is None:  # canvas refuses a chord without one at send: a stray message
            log.error("chord %s: no coordinator to count on (rpc://); its body is not sent",
                      ref.group_id)  # fmt: skip
            return
        count = await coordinator.incr(f"chord:{ref.group_id}", self.ttl_s)
        if count < ref.size:
            return
        meta = await backend.get(group_meta_key(ref.group_id))
        if meta is None:  # it can never complete: say so where its result is awaited
            reason = f"chord {ref.group_id}: its member list expired; the chord cannot complete"
            log.error("%s", reason)
            failure = Failure(type="ChordError", module="aiotq", message=reason)
            cause = ResultRecord(
                task_id=ref.group_id, state="FAILURE", failure=failure, date_done_s=time.time()
            )
            await self._fail_outcome(ref, cause)
            return
        records = []
        for member_id in msgspec.json.decode(meta, type=list[str]):
            data = await backend.get(member_id)
            if data is None:
                return  # counted twice by a redelivery: the last member to finish fires it
            records.append(decode_record(data))
        if any(r.state not in ("SUCCESS", "FAILURE", "REVOKED") for r in records):
            return
        if await coordinator.incr(f"chord-fired:{ref.group_id}", self.ttl_s) != 1:
            return  # another worker fired it
        failed = next((r for r in records if r.state != "SUCCESS"), None)
        if failed is not None:
            log.error(
                "chord %s: member %s failed (%s); its body does not run",
                ref.group_id, failed.task_id, failed.failure,
            )  # fmt: skip
            await self._fail_outcome(ref, failed)
        elif ref.body is None:  # a group that is one member of an outer chord: it is done
            await self._succeed(ref.group_id, [r.result for r in records])
            if ref.then is not None:
                await self._chord_step(ref.then)
        else:
            body = Signature.from_data(ref.body, self.app)
            await self._send("a chord's body", body, ([r.result for r in records],))

    async def _fail_outcome(self, ref: ChordRef, failed: ResultRecord) -> None:
        """The chord failed: what awaits it raises the cause, and what it reports to counts."""
        if ref.body is None:
            await self._fail([ref.group_id], failed)
            if ref.then is not None:
                await self._chord_step(ref.then)
        else:
            await self._fail_signature(ref.body, failed)
            for errback in errbacks_of(ref.body):  # the chord's own error callbacks, once
                await self._send(
                    errback.task, Signature.from_data(errback, self.app),
                    (failed.task_id, str(failed.failure)),
                )  # fmt: skip

    async def _fail_signature(self, data: SignatureData, cause: ResultRecord) -> None:
        """A signature that will never run: its results show the cause, and the chords it
        would have reported to count it as failed (so none of them waits forever)."""
        await self._fail(result_ids(data), cause)
        for ref in terminal_refs(data):
            await self._chord_step(ref)

    async def _succeed(self, task_id: str, value: Any) -> None:
        record = ResultRecord(
            task_id=task_id, state="SUCCESS", result=value, date_done_s=time.time()
        )
        await self.app.backend.store([(task_id, self.codec.encode(record))], self.ttl_s)

    async def _fail(self, task_ids: list[str], cause: ResultRecord) -> None:
        """Store the cause's failure under each id, so a wait on any of them raises it."""
        if task_ids:
            records = [
                (i, self.codec.encode(msgspec.structs.replace(cause, task_id=i))) for i in task_ids
            ]
            await self.app.backend.store(records, self.ttl_s)

    async def _send(
        self, what: str, signature: Signature, args: tuple[Any, ...], **options: Any
    ) -> None:
        try:
            await signature.aapply_async(args, **options)
        except Transient:
            raise  # the publisher runs the follow-ups again; the message stays unacknowledged
        except Exception as exc:
            log.error("could not send %s (%r): %s", what, signature, exc)
