"""Unique jobs: at most one queued or running task per key, held as a Coordinator lease.

A send with a key (`unique_key=`, or the task's `unique=`) takes the lease
`unique:<task name>:<key>` with the new task's id as its holder: one atomic step of the
coordinator (a Lua script on Redis, one SQLite transaction, a lock in memory), so of any
number of producers sending at once exactly one publishes. The others publish nothing and
return the holder's id, so every caller awaits the same result.

The lease's name and TTL travel in the message's headers. The worker gives the lease up
when the task reaches a final state (success, final failure, revoked or expired,
dead-lettered) and renews it on a retry (a retrying task is still queued). The TTL frees the
key of a task whose worker died or whose message was lost.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

from .exceptions import BackendUnavailable, ConfigurationError

if TYPE_CHECKING:
    from .backends.base import Coordinator

# True: name + args + kwargs; "args": name + positional args only (a kwarg such as a request
# id does not make a call different); a callable: (args, kwargs) -> the key, or None for a
# call that is not to be deduplicated
Unique: TypeAlias = bool | Literal["args"] | Callable[[tuple[Any, ...], dict[str, Any]], str | None]

HEADER = "x-aiotq-unique"  # the lease's name
TTL_HEADER = "x-aiotq-unique-ttl"  # seconds the key is held once the task is due

# lease() refused and holder() found nobody (or a finished task): the holder released in
# between. Each round means another task took and gave the key up meanwhile, so a few
# rounds are plenty.
_ATTEMPTS = 5


def checked(task_name: str, unique: Any) -> Unique:
    """A task's `unique=` option, or a ConfigurationError naming the task."""
    if unique is None:
        return False
    if isinstance(unique, bool) or unique == "args" or callable(unique):
        return unique
    raise ConfigurationError(
        f"task {task_name}: unique is True (name + args + kwargs), 'args' (name + positional"
        f" args) or a callable (args, kwargs) -> key, not {unique!r}"
    )


def checked_ttl(task_name: str, ttl_s: Any) -> float | None:
    """A task's `unique_ttl=` (seconds; None: the task_unique_ttl_s setting)."""
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or ttl_s <= 0:
        raise ConfigurationError(f"task {task_name}: unique_ttl is seconds (> 0), not {ttl_s!r}")
    return float(ttl_s)


def key_of(
    task_name: str, unique: Unique, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    """The call's key under the task's `unique=` option (None: not deduplicated)."""
    if unique is False:
        return None
    if unique is True or unique == "args":
        keyed: list[Any] = [list(args), dict(kwargs)] if unique is True else [list(args)]
        try:  # canonical: dict keys sorted, so {"a":1,"b":2} and {"b":2,"a":1} meet
            encoded = msgspec.json.encode(keyed, order="deterministic")
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise TypeError(
                f"task {task_name}: unique={unique!r} keys on the arguments, which cannot be"
                f" encoded as JSON ({exc}); give unique a callable or send with unique_key="
            ) from None
        return hashlib.sha256(encoded).hexdigest()
    assert callable(unique)
    key = unique(tuple(args), dict(kwargs))
    if key is not None and (not isinstance(key, str) or not key):
        raise TypeError(
            f"task {task_name}: its unique callable must return a non-empty str (or None),"
            f" got {key!r}"
        )
    return key


def lease_name(task_name: str, key: str) -> str:
    """Keys are per task: two tasks may use the same key without meeting."""
    return f"unique:{task_name}:{key}"


async def claim(
    coordinator: Coordinator,
    name: str,
    task_id: str,
    ttl_s: float,
    finished: Callable[[str], Awaitable[bool]],
) -> str | None:
    """Take the key for `task_id`: None when it now holds it (publish it), else the id of
    the task that holds it (publish nothing and hand out that one's result).

    A holder whose final result is stored already (`finished`) is done: its worker gives
    the key up just after storing, or died in between. It is given up here instead, so a
    send after `get()` returned makes a new task, never the old one again."""
    for _ in range(_ATTEMPTS):
        if await coordinator.lease(name, task_id, ttl_s):
            return None
        holder = await coordinator.holder(name)
        if holder is not None:
            if not await finished(holder):
                return holder
            await coordinator.release(name, holder)  # only if it still holds it
    raise BackendUnavailable(
        f"unique key {name!r} changed hands {_ATTEMPTS} times during one send; send again"
    )


async def unclaim(coordinator: Coordinator, claims: Iterable[tuple[str, str]]) -> None:
    """Give up keys taken for messages that did not leave (an encode or publish error), so
    the next send need not wait for the TTL. Best effort: the TTL frees what this cannot."""
    for name, task_id in claims:
        with contextlib.suppress(Exception):
            await coordinator.release(name, task_id)


def held(headers: Mapping[str, Any]) -> tuple[str, float | None] | None:
    """(lease name, TTL) of a message that holds a key, from its headers."""
    name = headers.get(HEADER)
    if not isinstance(name, str):
        return None
    ttl_s = headers.get(TTL_HEADER)
    return name, float(ttl_s) if isinstance(ttl_s, (int, float)) else None
