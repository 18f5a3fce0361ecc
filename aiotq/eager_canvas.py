"""Canvas under `task_always_eager`: a signature, chain, group or chord sent while eager runs
here and now, as in Celery (tests that set `task_always_eager` send whole workflows).

Each task runs through `task.aapply()` (aiotq/eager.py: the worker's run minus the broker
and the backend). A chain feeds each result to the next step and stops at a failure; a
group runs its members in order; a chord runs its header, then its body with the header's
results, unless a member failed. `link` callbacks run after a success with its result,
`link_error` errbacks after a failure with (task id, error), as a worker would.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from .canvas import Signature, chain, chord, group
from .exceptions import NotRegistered
from .result import SUCCESS, EagerResult, GroupResult

# options that mean something only to a broker and a worker, dropped from an eager run
_QUEUED_ONLY = ("link", "link_error", "chain", "chord", "group_id", "unique_key")


async def apply(
    sig: Signature, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> Any:
    """Run `sig` (extra `args` first, unless it is immutable) and return its results."""
    if isinstance(sig, chord):
        return await _chord(sig, args, kwargs, options)
    if isinstance(sig, chain):
        return await _chain(sig, args, kwargs, options)
    if isinstance(sig, group):
        results = [await apply(member, args, kwargs, {}) for member in sig.tasks]
        producer = sig._app()
        return GroupResult(str(sig.options.get("group_id") or uuid.uuid4()), results, producer)
    return await _one(sig, args, kwargs, options)


async def _one(
    sig: Signature, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> EagerResult[Any]:
    producer = sig._app()
    name, call_args, call_kwargs, call_options, _ = sig._call(args, kwargs, options)
    task: Any = producer.tasks.get(name)
    if task is None:
        raise NotRegistered(
            f"task {name!r} cannot run eagerly (task_always_eager): it is not registered in"
            f" this app (import the module that defines it)"
        )
    links = list(call_options.get("link") or [])
    errbacks = list(call_options.get("link_error") or [])
    kept = {k: v for k, v in call_options.items() if k not in _QUEUED_ONLY}
    result: EagerResult[Any] = await task.aapply(call_args, call_kwargs, **kept)
    if result.state == SUCCESS:
        for link in links:
            await apply(Signature.from_data(link, producer), (result.result,), None, {})
    else:
        for errback in errbacks:
            await apply(Signature.from_data(errback, producer), (result.id, result.result), None,
                        {})  # fmt: skip
    return result


async def _chain(
    sig: chain, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> Any:
    result: Any = None
    for index, step in enumerate(sig.tasks):
        if index == 0:
            result = await apply(step, args, kwargs, {})
        else:
            result = await apply(step, (await _value(result),), None, {})
        if not await _succeeded(result):
            return result  # the later steps do not run (a worker would not send them)
    return result


async def _chord(
    sig: chord, args: Sequence[Any], kwargs: dict[str, Any] | None, options: dict[str, Any]
) -> Any:
    header = await apply(sig.header, args, kwargs, {})
    if sig.body is None:
        return header
    if not await _succeeded(header):
        failed = next(r for r in header.results if r.state != SUCCESS)
        return failed  # the body does not run; its error is the member's
    return await apply(sig.body, ([r.result for r in header.results],), None, {})


async def _succeeded(result: Any) -> bool:
    if isinstance(result, GroupResult):
        return all([await _succeeded(member) for member in result.results])
    return bool(result.state == SUCCESS)


async def _value(result: Any) -> Any:
    if isinstance(result, GroupResult):
        return [await _value(member) for member in result.results]
    return result.result
