"""Signatures and the canvas: chain, group, chord. Everything here is plain data.

A signature turns into `SignatureData` (msgspec) and travels inside messages; no closure ever
crosses a process. Applying works the same for every kind, and each kind is one rule:

- task: one message. The option `chain=[...]` rides in it: the steps after this one.
- chain: its first step is sent with the other steps as `chain=`; the worker that finishes a
  step sends the next one with the result prepended to its arguments. A group followed by
  more steps becomes a chord, as in Celery.
- group: every member sent with one `group_id`; a `GroupResult` over their results. Groups
  directly inside a group are unrolled into it (Celery's rule).
- chord: the header's members carry a `ChordRef`; each finished member increments the
  backend's atomic counter, and the one that completes the count sends the body with the
  list of results (see `aiotq/worker/followups.py`).

Nesting is one rule too: what a composite is given for "when you are done" (a link, an
error callback, the chord it is a member of) goes to the part that finishes last: a
chain's last step, a chord's body. A group that is one member of a chord (a chain ending in
a group, in a chord's header) first collects its own results, then counts as one member.

Every result id is chosen before anything is sent (`freeze()`), so the handle you get back
(the chain's last result, with `.parent` links; the `GroupResult`) is valid at once.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .producer import Call, HasProducer, Producer, producer_of
from .protocol import ChordRef, SignatureData, chord_ref, group_meta_key, signature_list
from .result import AsyncResult, GroupResult

AppLike = Producer | HasProducer
Handle = Any  # AsyncResult or GroupResult


class Signature:
    """One task call with some arguments bound: `add.s(2)`, `add.si(2, 2)`."""

    kind = "task"

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
        app: AppLike | None = None,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self.producer = producer_of(app)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Options for when it is sent: queue, countdown, priority, link, link_error..."""
        if immutable is not None:
            self.immutable = immutable
        for key in ("link", "link_error"):
            for callback in signature_list(options.pop(key, None)):
                getattr(self, key)(callback)
        self.options.update(options)
        return self

    def clone(self) -> Signature:
        return Signature(
            self.task, self.args, self.kwargs, options=_copy_options(self.options),
            immutable=self.immutable, app=self.producer,
        )  # fmt: skip

    def __or__(self, other: Signature) -> chain:
        return chain(self, other)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's: calling a task's signature runs the task here and now."""
        task = self._app().tasks.get(self.task)
        if task is None:
            raise TypeError(f"{self.task} is not a task of this app; send it instead")
        call_args = self.args if self.immutable else (*args, *self.args)
        run: Any = task  # a Task: calling it runs the function
        return run(*call_args, **{**self.kwargs, **kwargs})

    # -- what runs after it ------------------------------------------------------------------
    def link(self, callback: Any) -> Any:
        """Run `callback` with this task's result after it succeeds; returns the callback."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Any) -> Any:
        """Run `errback` with (task id, error) if this task fails; returns the errback."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def _report_to(self, ref: ChordRef) -> None:
        """This signature is one member of a chord: its last task counts for it."""
        self.options["chord"] = ref

    def _follow_with(self, options: dict[str, Any]) -> dict[str, Any]:
        """Take a composite's follow-up options onto the parts that finish last; return the
        options left, which apply to every part (queue, priority, countdown...)."""
        rest = dict(options)
        for callback in signature_list(rest.pop("link", None)):
            self.link(callback)
        for errback in signature_list(rest.pop("link_error", None)):
            self.link_error(errback)
        ref = chord_ref(rest.pop("chord", None))
        if ref is not None:
            self._report_to(ref)
        return rest

    # -- ids and data ------------------------------------------------------------------------
    def freeze(self) -> Handle:
        """Choose the result id now (kept if already chosen) and return its handle."""
        task_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(task_id, self._app(), task_name=self.task)

    def _freeze_span(self) -> tuple[Handle, Handle]:
        """The first and the last handle it fills, for `.parent` links across nesting."""
        result = self.freeze()
        return result, result

    def data(self) -> SignatureData:
        return SignatureData(
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            options=_plain_options(self.options),
            immutable=self.immutable,
        )

    @staticmethod
    def from_data(data: SignatureData, app: AppLike) -> Signature:
        options = dict(data.options)
        if data.kind == "chain":
            steps = [Signature.from_data(step, app) for step in data.tasks]
            return chain(*steps, app=app, options=options)
        if data.kind == "group":
            members = [Signature.from_data(member, app) for member in data.tasks]
            return group(*members, app=app, options=options)
        if data.kind == "chord":
            assert data.body is not None
            header = [Signature.from_data(member, app) for member in data.tasks]
            return chord(header, Signature.from_data(data.body, app), app=app, options=options)
        return Signature(
            data.task, data.args, data.kwargs, options=options, immutable=data.immutable, app=app
        )

    def _app(self) -> Producer:
        if self.producer is None:
            raise TypeError(f"signature {self!r} is not bound to an app")
        return self.producer

    def check(self, prepended: int = 0) -> None:
        """Fail now, not in a worker, if the bound arguments cannot fit the function
        (`prepended` more will come first: a parent's result)."""
        task = self._app().tasks.get(self.task)
        if task is not None:
            extra = () if self.immutable else (None,) * prepended
            task.check_call((*extra, *self.args), self.kwargs)

    # -- sending: the same four calls on every kind ------------------------------------------
    async def send(self, *args: Any, **kwargs: Any) -> Any:
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        return self._app().call(self.aapply_async(args, kwargs, **options))

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send it; extra args (a parent's result) are prepended unless it is immutable."""
        producer = self._app()
        if producer.conf.settings.task_always_eager and producer.eager_canvas is not None:
            return await producer.eager_canvas(self, args, kwargs, options)
        task_id = await producer.send(*self._call(args, kwargs, options))
        return AsyncResult(task_id, producer, task_name=self.task)

    def _call(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> Call:
        """What sending it sends: (name, args, kwargs, options, task)."""
        call_args = self.args if self.immutable else (*args, *self.args)
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        return self.task, call_args, call_kwargs, _plain_options({**self.options, **options}), None


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as they travel: signatures in link / link_error / chain become data."""
    if not any(key in options for key in ("link", "link_error", "chain")):
        return options
    plain = dict(options)
    for key in ("link", "link_error", "chain"):
        if key in plain:
            plain[key] = signature_list(plain[key])
    return plain


def _copy_options(options: dict[str, Any]) -> dict[str, Any]:
    """A copy whose callback lists can grow without touching the original's."""
    copy = dict(options)
    for key in ("link", "link_error"):
        if key in copy:
            copy[key] = list(signature_list(copy[key]))
    return copy


def _flatten(items: Iterable[Any]) -> list[Signature]:
    items = list(items)
    if len(items) == 1 and not isinstance(items[0], Signature):
        items = list(items[0])  # chain(generator), group([...])
    for item in items:
        if not isinstance(item, Signature):
            raise TypeError(f"expected signatures (task.s(...)), got {item!r}")
    return items


def _app_of(items: Sequence[Signature], app: AppLike | None) -> Producer | None:
    producer = producer_of(app)
    return producer or next((i.producer for i in items if i.producer is not None), None)


class _Canvas(Signature):
    """chain, group and chord: applying works on a copy, so applying one twice never
    shares result ids; calling one sends it, as in Celery."""

    tasks: list[Signature]  # steps, members or a chord's header

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        producer = self._app()
        if producer.conf.settings.task_always_eager and producer.eager_canvas is not None:
            return await producer.eager_canvas(self.clone(), args, kwargs, options)
        replies = producer.wiring.replies
        keeps = replies is None or replies.keeps_results
        if not isinstance(self, group) and not keeps:
            raise TypeError(
                f"a {self.kind} needs a result backend that keeps results (redis://, sqlite://),"
                " not rpc://: its later steps run in workers, whose results rpc:// cannot return"
            )
        copy = self.clone()
        assert isinstance(copy, _Canvas)
        return await copy._apply(args, kwargs, **options)

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        raise NotImplementedError


class chain(_Canvas):
    """`chain(a.s(1), b.s(), c.s())` or `a.s(1) | b.s() | c.s()`: each result feeds the next."""

    kind = "chain"

    def __init__(
        self, *tasks: Any, app: AppLike | None = None, options: dict[str, Any] | None = None
    ) -> None:
        steps: list[Signature] = []
        for task in _flatten(tasks):
            if isinstance(task, chain) and not task.options:
                steps.extend(task.tasks)
            else:
                steps.append(task)
        self.tasks = steps
        super().__init__("chain", options=options, app=_app_of(steps, app))

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks)

    def __or__(self, other: Signature) -> chain:
        return chain(*self.tasks, other, app=self.producer, options=dict(self.options))

    def clone(self) -> chain:
        return chain(
            *(t.clone() for t in self.tasks), app=self.producer, options=_copy_options(self.options)
        )

    def link(self, callback: Any) -> Any:
        return self._last().link(callback)

    def link_error(self, errback: Any) -> Any:
        for step in self.tasks:  # whichever step fails calls it (Celery's rule)
            step.link_error(errback)
        return errback

    def _report_to(self, ref: ChordRef) -> None:
        self._last()._report_to(ref)

    def _last(self) -> Signature:
        self._normalise()
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        return self.tasks[-1]

    def _normalise(self) -> None:
        """A group followed by more steps is a chord whose body is the rest (Celery's rule)."""
        for index, step in enumerate(self.tasks[:-1]):
            if isinstance(step, group):
                rest = self.tasks[index + 1 :]
                body = rest[0] if len(rest) == 1 else chain(*rest, app=self.producer)
                self.tasks[index:] = [chord(step, body, app=self.producer)]
                return

    def freeze(self) -> Handle:
        return self._freeze_span()[1]

    def _freeze_span(self) -> tuple[Handle, Handle]:
        self._last()
        spans = [step._freeze_span() for step in self.tasks]
        for (_, before), (first, _) in itertools.pairwise(spans):
            first.parent = before
        return spans[0][0], spans[-1][1]

    def data(self) -> SignatureData:
        tasks = [step.data() for step in self.tasks]
        return SignatureData(kind="chain", tasks=tasks, options=_plain_options(self.options))

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        merged = {**self.options, **options}
        steps = [*self.tasks]
        steps += [
            Signature.from_data(d, self._app()) for d in signature_list(merged.pop("chain", None))
        ]
        whole = chain(*steps, app=self.producer)
        rest = whole._follow_with(merged)
        result = whole.freeze()
        for step in whole.tasks[1:]:
            step.check(prepended=1)
        later = [step.data() for step in whole.tasks[1:]]
        first = whole.tasks[0]
        await first.aapply_async(args, kwargs, chain=later, **_without_id(rest))
        return result


class group(_Canvas):
    """`group(scan.s(i, i) for i in range(10))`: run in parallel; a `GroupResult` back."""

    kind = "group"

    def __init__(
        self, *tasks: Any, app: AppLike | None = None, options: dict[str, Any] | None = None
    ) -> None:
        members: list[Signature] = []
        for task in _flatten(tasks):
            if isinstance(task, group):  # unrolled, as in Celery: its members are ours
                inner = {k: v for k, v in task.options.items() if k != "group_id"}
                for member in task.tasks:
                    extra = {k: v for k, v in inner.items() if k not in member.options}
                    members.append(member.clone().set(**extra) if extra else member)
            else:
                members.append(task)
        self.tasks = members
        super().__init__("group", options=options, app=_app_of(self.tasks, app))

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def clone(self) -> group:
        return group(
            *(t.clone() for t in self.tasks), app=self.producer, options=_copy_options(self.options)
        )

    def link(self, callback: Any) -> Any:
        """Celery's rule: the callback runs once, after the first member, with no arguments
        of its own (use a chord to run something after every member)."""
        if self.tasks:
            self.tasks[0].link(_immutable(callback))
        return callback

    def link_error(self, errback: Any) -> Any:
        for member in self.tasks:
            member.link_error(_immutable(errback) if isinstance(errback, Signature) else errback)
        return errback

    def freeze(self) -> GroupResult:
        group_id = self.options.setdefault("group_id", str(uuid.uuid4()))
        return GroupResult(group_id, [t.freeze() for t in self.tasks], self._app())

    def data(self) -> SignatureData:
        tasks = [member.data() for member in self.tasks]
        return SignatureData(kind="group", tasks=tasks, options=_plain_options(self.options))

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        merged = {**self.options, **options}
        later = signature_list(merged.pop("chain", None))
        if later:  # something runs after the whole group: that is a chord
            steps = [Signature.from_data(d, self._app()) for d in later]
            body = steps[0] if len(steps) == 1 else chain(*steps, app=self.producer)
            return await chord(self, body, app=self.producer)._apply(args, kwargs, **merged)
        outer = chord_ref(merged.pop("chord", None))
        rest = self._follow_with(merged)
        result = self.freeze()
        if outer is None:
            rest["group_id"] = result.id
            await self._send_all(args, kwargs, _without_id(rest))
            return result
        # One member of an outer chord: collect our own results under our id, then count.
        if not self.tasks:
            raise ValueError("an empty group cannot be a member of a chord: it never finishes")
        await _store_members(self._app(), result)
        ref = ChordRef(group_id=result.id, size=len(self.tasks), then=outer)
        await self._send_members(args, kwargs, ref, rest)
        return result

    async def _send_members(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, ref: ChordRef,
        options: dict[str, Any],
    ) -> None:  # fmt: skip
        shared = {**_without_id(options), "group_id": ref.group_id}
        for member in self.tasks:
            member._report_to(ref)
        await self._send_all(args, kwargs, shared)

    async def _send_all(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> None:
        """Members in order: runs of plain task calls in one batch each (`send_many`: one
        pipeline, not a round trip per member); a nested chain or chord is applied alone."""
        producer = self._app()
        batch: list[Call] = []
        for member in self.tasks:
            if type(member) is Signature and member.producer is producer:
                batch.append(member._call(args, kwargs, options))
                continue
            if batch:
                await producer.send_many(batch, "group member")
                batch = []
            await member.aapply_async(args, kwargs, **options)
        if batch:
            await producer.send_many(batch, "group member")


class chord(_Canvas):
    """`chord(header, body)`: the body runs once, after every header member, with their
    results in order. A member's failure fails the chord and the body does not run."""

    kind = "chord"

    def __init__(
        self,
        header: Any,
        body: Signature | None = None,
        *,
        app: AppLike | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.header = header if isinstance(header, group) else group(*_flatten([header]))
        self.body = body
        super().__init__(
            "chord",
            options=options,
            app=_app_of([*self.header.tasks, *([body] if body else [])], app),
        )
        self.header.producer = self.header.producer or self.producer  # an empty header: none

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, body: Signature | None = None, **options: Any) -> Any:
        """Celery's `chord(header)(body)` and `chord(header, body)()`: send now (sync code)."""
        target = self if body is None else chord(
            self.header, body, app=self.producer, options=dict(self.options)
        )  # fmt: skip
        return target.apply_async(**options)

    def clone(self) -> chord:
        body = self.body.clone() if self.body else None
        return chord(
            self.header.clone(), body, app=self.producer, options=_copy_options(self.options)
        )

    def link(self, callback: Any) -> Any:
        return self._body().link(callback)

    def link_error(self, errback: Any) -> Any:
        """Runs once if the chord fails: a header member failed, or the body did."""
        return self._body().link_error(errback)

    def _report_to(self, ref: ChordRef) -> None:
        self._body()._report_to(ref)

    def _body(self) -> Signature:
        if self.body is None:
            raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
        return self.body

    def freeze(self) -> Handle:
        return self._freeze_span()[1]

    def _freeze_span(self) -> tuple[Handle, Handle]:
        header = self.header.freeze()
        first, last = self._body()._freeze_span()
        first.parent = header
        return header, last

    def data(self) -> SignatureData:
        tasks = [member.data() for member in self.header.tasks]
        return SignatureData(
            kind="chord",
            tasks=tasks,
            body=self._body().data(),
            options=_plain_options(self.options),
        )

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        merged = {**self.options, **options}
        later = [
            Signature.from_data(d, self._app()) for d in signature_list(merged.pop("chain", None))
        ]
        body = self._body()
        if later:  # the steps after the chord run after its body
            body = self.body = chain(body, *later, app=self.producer)
        rest = body._follow_with(merged)
        header, result = self._freeze_span()
        body.check(prepended=1)
        if not self.header.tasks:  # nothing to wait for
            await body.aapply_async(([],))
            return result
        await _store_members(self._app(), header)
        ref = ChordRef(group_id=header.id, size=len(header.results), body=body.data())
        await self.header._send_members(args, kwargs, ref, rest)
        return result


def last_task(sig: Signature) -> Signature:
    """The task that finishes a signature: its result is the whole one's."""
    while isinstance(sig, (chain, chord, group)):
        if isinstance(sig, group):
            raise ValueError("a group has no one last task; end it in a chord's body")
        sig = sig._last() if isinstance(sig, chain) else sig._body()
    return sig


def _immutable(callback: Any) -> Any:
    return callback.clone().set(immutable=True) if isinstance(callback, Signature) else callback


async def _store_members(producer: Producer, header: GroupResult) -> None:
    """The member ids, kept where the counting worker (and GroupResult.restore) reads them."""
    meta = msgspec.json.encode([member.id for member in header.results])
    wiring = producer.wiring
    await wiring.backend.store(
        [(group_meta_key(header.id), meta)], wiring.settings.result_expires_s
    )


def _without_id(options: dict[str, Any]) -> dict[str, Any]:
    """A composite's options pass to its parts, except an id chosen for the whole."""
    return {k: v for k, v in options.items() if k != "task_id"}
