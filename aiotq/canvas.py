"""Signatures and the canvas: chain, group, chord. Everything here is plain data.

A signature turns into `SignatureData` (msgspec) and travels inside messages; no closure ever
crosses a process. Applying works the same for every kind, and each kind is one rule:

- task: one message. The option `chain=[...]` rides in it: the steps after this one.
- chain: its first step is sent with the other steps as `chain=`; the worker that finishes a
  step sends the next one with the result prepended to its arguments. A group followed by
  more steps becomes a chord, as in Celery.
- group: every member sent with one `group_id`; a `GroupResult` over their results.
- chord: the header's members carry a `ChordRef`; each finished member increments the
  backend's atomic counter, and the one that completes the count sends the body with the
  list of results (see `aiotq/worker/followups.py`).

Every result id is chosen before anything is sent (`freeze()`), so the handle you get back
(the chain's last result, with `.parent` links; the `GroupResult`) is valid at once.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .producer import HasProducer, Producer, producer_of
from .protocol import ChordRef, SignatureData, group_meta_key, signature_list
from .result import AsyncResult, GroupResult

AppLike = Producer | HasProducer


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

    def set(self, **options: Any) -> Signature:
        """Options for when it is sent: queue, countdown, priority..."""
        self.options.update(options)
        return self

    def clone(self) -> Signature:
        return Signature(
            self.task, self.args, self.kwargs, options=dict(self.options),
            immutable=self.immutable, app=self.producer,
        )  # fmt: skip

    def __or__(self, other: Signature) -> chain:
        return chain(self, other)

    def freeze(self) -> Any:
        """Choose the result id now (kept if already chosen) and return its handle."""
        task_id = self.options.setdefault("task_id", str(uuid.uuid4()))
        return AsyncResult(task_id, self._app(), task_name=self.task)

    def data(self) -> SignatureData:
        return SignatureData(
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            options=self.options,
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
        call_args = self.args if self.immutable else (*args, *self.args)
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        options = {**self.options, **options}
        producer = self._app()
        task_id = await producer.send(self.task, call_args, call_kwargs, options)
        return AsyncResult(task_id, producer, task_name=self.task)


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
    shares result ids."""

    tasks: list[Signature]  # steps, members or a chord's header

    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        replies = self._app().wiring.replies
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
            steps.extend(task.tasks if isinstance(task, chain) else [task])
        self.tasks = steps
        super().__init__("chain", options=options, app=_app_of(steps, app))

    def __repr__(self) -> str:
        return " | ".join(repr(step) for step in self.tasks)

    def __or__(self, other: Signature) -> chain:
        return chain(*self.tasks, other, app=self.producer, options=dict(self.options))

    def clone(self) -> chain:
        return chain(
            *(t.clone() for t in self.tasks), app=self.producer, options=dict(self.options)
        )

    def _normalise(self) -> None:
        """A group followed by more steps is a chord whose body is the rest (Celery's rule)."""
        for index, step in enumerate(self.tasks[:-1]):
            if isinstance(step, group):
                rest = self.tasks[index + 1 :]
                body = rest[0] if len(rest) == 1 else chain(*rest, app=self.producer)
                self.tasks[index:] = [chord(step, body, app=self.producer)]
                return

    def freeze(self) -> Any:
        self._normalise()
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        results = [step.freeze() for step in self.tasks]
        for parent, child in itertools.pairwise(results):
            child.parent = parent
        return results[-1]

    def data(self) -> SignatureData:
        tasks = [step.data() for step in self.tasks]
        return SignatureData(kind="chain", tasks=tasks, options=self.options)

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        result = self.freeze()
        for step in self.tasks[1:]:
            step.check(prepended=1)
        merged = {**self.options, **options}
        later = [step.data() for step in self.tasks[1:]] + signature_list(merged.pop("chain", []))
        if "chord" in merged:  # this chain is a chord member: its last step reports to it
            ref = merged.pop("chord")
            if later:
                later[-1].options["chord"] = ref
            else:
                merged["chord"] = ref
        first = self.tasks[0]
        await first.aapply_async(args, kwargs, chain=later, **_without_id(merged))
        return result


class group(_Canvas):
    """`group(scan.s(i, i) for i in range(10))`: run in parallel; a `GroupResult` back."""

    kind = "group"

    def __init__(
        self, *tasks: Any, app: AppLike | None = None, options: dict[str, Any] | None = None
    ) -> None:
        self.tasks = _flatten(tasks)
        super().__init__("group", options=options, app=_app_of(self.tasks, app))

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def clone(self) -> group:
        return group(
            *(t.clone() for t in self.tasks), app=self.producer, options=dict(self.options)
        )

    def freeze(self) -> GroupResult:
        group_id = self.options.setdefault("group_id", str(uuid.uuid4()))
        return GroupResult(group_id, [t.freeze() for t in self.tasks], self._app())

    def data(self) -> SignatureData:
        tasks = [member.data() for member in self.tasks]
        return SignatureData(kind="group", tasks=tasks, options=self.options)

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        merged = {**self.options, **options}
        later = signature_list(merged.pop("chain", []))
        if later:  # something runs after the whole group: that is a chord
            body = Signature.from_data(later[0], self._app()) if len(later) == 1 else None
            body = body or chain(*(Signature.from_data(d, self._app()) for d in later))
            return await chord(self, body, app=self.producer).aapply_async(args, kwargs, **merged)
        result = self.freeze()
        merged["group_id"] = result.id
        for member in self.tasks:
            if isinstance(member, group) and "chord" in merged:
                raise TypeError("a group directly inside a chord's header: flatten it")
            await member.aapply_async(args, kwargs, **_without_id(merged))
        return result


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

    def __call__(self, body: Signature) -> Any:
        """Celery's `chord(header)(body)`: send now (sync code)."""
        return chord(self.header, body, app=self.producer, options=dict(self.options)).apply_async()

    def clone(self) -> chord:
        body = self.body.clone() if self.body else None
        return chord(self.header.clone(), body, app=self.producer, options=dict(self.options))

    def _body(self) -> Signature:
        if self.body is None:
            raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
        return self.body

    def freeze(self) -> Any:
        header = self.header.freeze()
        result = self._body().freeze()
        result.parent = header
        return result

    def data(self) -> SignatureData:
        tasks = [member.data() for member in self.header.tasks]
        return SignatureData(
            kind="chord", tasks=tasks, body=self._body().data(), options=self.options
        )

    async def _apply(
        self, args: Sequence[Any], kwargs: dict[str, Any] | None, **options: Any
    ) -> Any:
        producer = self._app()
        body = self._body()
        result = self.freeze()
        body.check(prepended=1)
        merged = {**self.options, **options}
        later = signature_list(merged.pop("chain", []))
        if later:
            body.options["chain"] = later
        header = result.parent
        if not self.header.tasks:  # nothing to wait for
            await body.aapply_async(([],))
            return result
        ids = [member.id for member in header.results]
        meta = msgspec.json.encode(ids)
        wiring = producer.wiring
        await wiring.backend.store(
            [(group_meta_key(header.id), meta)], wiring.settings.result_expires_s
        )
        ref = ChordRef(group_id=header.id, size=len(ids), body=body.data())
        await self.header.aapply_async(args, kwargs, chord=ref, **_without_id(merged))
        return result


def _without_id(options: dict[str, Any]) -> dict[str, Any]:
    """A composite's options pass to its parts, except an id chosen for the whole."""
    return {k: v for k, v in options.items() if k != "task_id"}
