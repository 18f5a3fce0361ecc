"""What happens after a task's result is stored: callbacks, a chain's next step, a chord's count.

The result publisher runs these after the store and before the ack, so a worker that dies in
between has its message redelivered and the follow-ups still happen (at least once). A chord
tolerates the duplicate count that redelivery can cause: it fires when the count reaches its
size *and* every member's result is ready, and a second counter makes the firing happen once.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from ..canvas import Signature
from ..exceptions import Transient
from ..protocol import (
    CODECS,
    ChordRef,
    Message,
    ResultRecord,
    decode_record,
    group_meta_key,
    result_ids,
)

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

    async def after_failure(self, message: Message, record: ResultRecord) -> None:
        with self.app.producer.tracing.resumed(message):
            await self._after_failure(message, record)

    async def _after_failure(self, message: Message, record: ResultRecord) -> None:
        error = str(record.failure)
        for errback in message.link_error:
            await self._send(
                errback.task, Signature.from_data(errback, self.app), (message.id, error)
            )
        if message.chain:  # the chain stops here; its later results show this failure
            later = [i for step in message.chain for i in result_ids(step)]
            await self._fail(later, record)
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
        if meta is None:
            log.error("chord %s: its member list expired; the body is not sent", ref.group_id)
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
            await self._fail(result_ids(ref.body), failed)
            return
        body = Signature.from_data(ref.body, self.app)
        await self._send("a chord's body", body, ([r.result for r in records],))

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
