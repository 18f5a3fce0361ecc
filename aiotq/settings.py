"""Settings: one typed msgspec Struct, Celery's names accepted, validated on assignment.

Units are in the names (`result_expires_s`); Celery's names (new, old and unit-less) are
looked up in celery_settings.py, which also says which Celery settings aiotq does not
support, and why. Every problem of one configuration is named in one error.
The environment (`AIOTQ_BROKER_URL`, `AIOTQ_RESULT_BACKEND`) is read once, when the
settings are finalized (first send or worker start), never at import.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import importlib
import inspect
import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import ModuleType
from typing import Any, Literal

import msgspec

from .celery_settings import CELERY_SETTINGS, TRANSPORT_OPTIONS, Unsupported
from .exceptions import ConfigurationError

Serializer = Literal["json", "msgpack"]


class SigningKeys:
    """`task_signing_key`, checked: the first key signs, every key verifies (rotation).
    Its repr, str and any encoding never show a key (`inspect conf`, logs, errors)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys = tuple(keys)

    def sign(self, body: bytes) -> str:
        return hmac.new(self._keys[0], body, hashlib.sha256).hexdigest()

    def verify(self, body: bytes, signature: str) -> bool:
        found = False
        for key in self._keys:  # every key compared: no early exit to time
            expected = hmac.new(key, body, hashlib.sha256).hexdigest()
            found |= hmac.compare_digest(expected, signature)
        return found

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningKeys) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def __repr__(self) -> str:
        return f"<{len(self._keys)} signing key{'s' if len(self._keys) > 1 else ''}, hidden>"

    __str__ = __repr__


def _signing_keys(shown: str, value: Any) -> SigningKeys | None:
    """None, a str, or a list of str (first signs) -> SigningKeys; errors never show a key."""
    if value is None or isinstance(value, SigningKeys):
        return value
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, (list, tuple)) or not keys:
        raise ConfigurationError(
            f"setting {shown}: expected a key (str) or a non-empty list of keys, "
            f"got {type(value).__name__}"
        )
    for index, key in enumerate(keys):
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"setting {shown}: key {index} must be a non-empty str, "
                f"got {'an empty str' if key == '' else type(key).__name__}"
            )
    return SigningKeys(key.encode() for key in keys)


class Settings(msgspec.Struct, kw_only=True):
    broker_url: str | None = None
    result_backend: str | None = None
    task_serializer: Serializer = "json"
    result_serializer: Serializer = "json"
    accept_content: list[Serializer] = msgspec.field(default_factory=lambda: ["json", "msgpack"])
    result_expires_s: float = 86400.0
    task_default_queue: str = "default"
    task_routes: Any = None
    task_queues: Any = None  # Queue(...) objects, or {name: {"exchange": ..., "routing_key": ...}}
    task_default_exchange: str | None = None  # Celery's default: the default queue's name
    task_default_exchange_type: Literal["direct", "topic", "fanout"] = "direct"
    task_default_routing_key: str | None = None
    broker_queue_type: Literal["classic", "quorum"] = "classic"  # RabbitMQ
    task_acks_late: bool = True
    # HMAC-SHA256 of each message's body (a key, or a list: the first signs, all verify, to
    # rotate); a worker with a key dead-letters unsigned or forged messages, never runs them
    task_signing_key: SigningKeys | None = None
    # Celery's wire protocol (issue: one queue at a time from Celery): "celery" makes the
    # broker and result backend speak kombu's message formats and Celery's result format, so
    # a Celery producer or worker shares the queues and results (docs/migrating-from-celery)
    task_protocol: Literal["aiotq", "celery"] = "aiotq"
    task_track_started: bool = False
    task_ignore_result: bool = False
    # Celery's result_extended: name, args, kwargs, worker and queue stored with the result
    result_extended: bool = False
    # Celery's task_annotations: {"tasks.add": {"rate_limit": "10/s"}, "*": {...}} or a list
    task_annotations: Any = None
    # Celery's task_always_eager: send runs the task here and now (tests); no broker touched
    task_always_eager: bool = False
    task_eager_propagates: bool = False
    # a worker lost mid-task: True (Celery's default False) is how aiotq always behaves with
    # acks_late; kept so Celery configs load, and False is refused (docs/migrating-from-celery)
    task_reject_on_worker_lost: bool | None = None
    task_time_limit_s: float | None = None
    task_soft_time_limit_s: float | None = None
    task_default_priority: int | None = None
    task_default_max_retries: int = 3
    task_default_retry_delay_s: float = 180.0
    # delivered this often without finishing (it killed its worker?): dead-lettered, not run
    task_max_deliveries: int | None = 5
    # unique jobs (`unique=` / `unique_key=`): how long a key is held once its task is due,
    # if no worker finishes it (one that died); a task's `unique_ttl=` wins
    task_unique_ttl_s: float = 3600.0
    # larger results fail with a clear error instead of a store that can never succeed
    # (Redis's proto-max-bulk-len is 512 MB, RabbitMQ's max message size 128 MB)
    result_max_bytes: int = 64 * 1024 * 1024
    worker_concurrency: int = 100
    worker_prefetch_multiplier: int = 1
    worker_threads: int = 10
    worker_processes: int = 0  # 0: one per CPU
    # Celery's names for the process executor: a child is replaced after this many tasks,
    # or once its resident memory passes this many KiB (checked after each task)
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    # Celery's --pool: prefork (sync tasks in processes), threads, solo (sync tasks in one
    # thread); async tasks always run on the loop. None: each task's own executor.
    worker_pool: Literal["prefork", "threads", "solo"] | None = None
    worker_shutdown_timeout_s: float = 30.0
    worker_tick_interval_s: float = 0.25
    worker_heartbeat_s: float = 2.0  # presence renewed this often; gone after 3 missed
    worker_loop_lag_warn_s: float = 0.5  # a loop blocked this long is logged, naming tasks
    worker_log_values: bool = True  # False: success lines carry no result (personal data)
    worker_log_value_max: int = 1024  # chars of a result's repr in a log line (Celery: 1024)
    # events (docs/monitoring.md): task events only with -E, as in Celery; worker events always
    worker_send_task_events: bool = False
    task_send_sent_event: bool = False  # the producer sends task-sent (one more post per send)
    event_keep: int = 1000  # batches of events the broker keeps for a monitor that starts late
    event_ttl_s: float = 3600.0
    event_value_max: int = 1024  # chars of args / kwargs / result carried by an event
    # revokes are kept this long (a day of results plus Celery's 3 h): a worker that starts
    # later, or a countdown task due later, still honours them
    revoke_expires_s: float = 97200.0
    # task history (aiotq/history.py), written by every worker into the result backend
    history_max_tasks: int = 100_000  # 0: keep none
    history_max_age_s: float = 86400.0
    tracing: bool = True  # OpenTelemetry spans, when opentelemetry is installed (aiotq[otel])
    producer_metrics: bool = False  # count celery_task_sent_total where tasks are sent
    worker_metrics_port: int | None = None  # --metrics-port: Prometheus /metrics per worker
    broker_visibility_timeout_s: float = 60.0
    # rate_limit across every worker of the app ("global": GCRA start slots in the result
    # backend's coordinator) or within each worker process ("worker", Celery's meaning)
    rate_limit_scope: Literal["worker", "global"] = "worker"
    # Celery's broker_transport_options: visibility_timeout, max_connections, socket_timeout
    # and socket_connect_timeout set aiotq's settings (unless set by name); other keys are
    # accepted and ignored (each broker has its own settings here)
    broker_transport_options: dict[str, Any] = msgspec.field(default_factory=dict)
    # Celery's result_backend_transport_options: a sentinel:// backend's master_name and
    # sentinel_kwargs (a backend on the broker's own URL uses broker_transport_options)
    result_backend_transport_options: dict[str, Any] = msgspec.field(default_factory=dict)
    # Redis with replicas (Sentinel, Cluster): a send and a result store return only once
    # this many replicas confirm them (WAIT), else they are retried (docs/deployment.md)
    redis_wait_replicas: int = 0
    redis_wait_timeout_s: float = 1.0
    broker_pool_size: int = 10
    broker_connection_timeout_s: float = 5.0
    broker_connection_retry_on_startup: bool = True
    sqlite_busy_timeout_s: float = 30.0  # how long a statement waits for another process's lock
    broker_publish_retry_s: float = 10.0
    broker_socket_timeout_s: float = 10.0  # Redis broker and backend: a read unanswered fails
    timezone: str = "UTC"
    enable_utc: bool = True
    beat_schedule: dict[str, Any] = msgspec.field(default_factory=dict)
    beat_lease_s: float = 10.0  # a dead leader's successor takes over within this
    beat_missed_runs: Literal["run_once", "skip"] = "run_once"  # runs due while no beat ran
    imports: list[str] = msgspec.field(default_factory=list)
    include: list[str] = msgspec.field(default_factory=list)


FIELDS: dict[str, Any] = {
    f.name: f.type
    for f in msgspec.structs.fields(Settings)  # name -> annotation
}

# aiotq's own spellings beside the field names: App()'s keywords and unit-less names.
# Celery's names, new and old, are in celery_settings.CELERY_SETTINGS.
ALIASES: dict[str, str] = {
    "broker": "broker_url",
    "backend": "result_backend",
    "task_default_retry_delay": "task_default_retry_delay_s",
    "worker_shutdown_timeout": "worker_shutdown_timeout_s",
    "visibility_timeout": "broker_visibility_timeout_s",
    "broker_visibility_timeout": "broker_visibility_timeout_s",
    "broker_socket_timeout": "broker_socket_timeout_s",
}

# every lowercase name that sets a field, and the field it sets
NAMES: dict[str, str] = {
    **{name: name for name in FIELDS},
    **{key: to for key, to in CELERY_SETTINGS.items() if isinstance(to, str)},
    **ALIASES,
}

ENVIRONMENT = {"AIOTQ_BROKER_URL": "broker_url", "AIOTQ_RESULT_BACKEND": "result_backend"}

# Celery's pools that need another concurrency model than aiotq's event loop
_FOREIGN_POOLS = {"gevent", "eventlet"}


def canonical_name(key: str) -> str | None:
    return NAMES.get(key.lower())


def unsupported(key: str) -> Unsupported | None:
    """A real Celery setting name that aiotq does not support, with its reason."""
    entry = CELERY_SETTINGS.get(key.lower())
    return entry if isinstance(entry, Unsupported) else None


def _suggestion(key: str, prefix: str = "") -> str:
    """'; did you mean ...?' for a typo of a known name, written as the user writes names."""
    forms = [key[len(prefix) :], key] if prefix else [key]
    known = [*NAMES, *CELERY_SETTINGS]
    best: tuple[float, str, str] | None = None  # (similarity, match, prefix to show)
    for index, form in enumerate(forms):
        for match in difflib.get_close_matches(form.lower(), known, n=1, cutoff=0.75):
            score = difflib.SequenceMatcher(None, form.lower(), match).ratio()
            if best is None or score > best[0]:
                best = (score, match, prefix if index == 0 else "")
    if best is None:
        return ""
    _, match, shown_prefix = best
    written = shown_prefix + (match.upper() if key.isupper() else match)
    note = " (a Celery setting aiotq does not support)" if unsupported(match) else ""
    return f"; did you mean {written!r}?{note}"


def _with_reason(key: str, entry: Unsupported) -> str:
    return f"{key!r} ({entry.reason})" if entry.reason else repr(key)


class _Problems:
    """Every problem of one configuration, raised as one error: a Django settings module
    with five Celery settings aiotq lacks is fixed in one pass, not five."""

    def __init__(self) -> None:
        self.unsupported: list[str] = []
        self.other: list[str] = []

    def add_unknown(self, key: str, prefix: str = "") -> None:
        entry = unsupported(key[len(prefix) :]) if prefix else None
        entry = entry or unsupported(key)
        if entry is None:
            self.other.append(f"unknown setting {key!r}{_suggestion(key, prefix)}")
        else:
            self.unsupported.append(_with_reason(key, entry))

    def raise_any(self) -> None:
        parts = list(self.other)
        if len(self.unsupported) == 1:
            parts.insert(0, f"a Celery setting aiotq does not support: {self.unsupported[0]}")
        elif self.unsupported:
            parts.insert(
                0, "Celery settings aiotq does not support: " + "; ".join(self.unsupported)
            )
        if parts:
            raise ConfigurationError("; ".join(parts))


def _normalise(name: str, value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if name in ("accept_content", "imports", "include") and isinstance(value, (tuple, set)):
        return list(value)
    if name == "broker_url" and isinstance(value, (list, tuple)):  # Celery's failover list
        return ";".join(value)  # kombu's other spelling of it: one URL per node
    if name == "worker_pool" and value == "processes":  # Celery's other name for prefork
        return "prefork"
    return value


def check_value(name: str, value: Any, written: str | None = None) -> Any:
    """Validate one value against its field's type; the error names the setting as written."""
    shown = repr(name) if written in (None, name) else f"{written!r} (aiotq's {name!r})"
    if name == "task_signing_key":
        return _signing_keys(shown, value)
    value = _normalise(name, value)
    if name == "worker_pool" and value in _FOREIGN_POOLS:
        raise ConfigurationError(
            f"setting {shown}: pool {value!r} cannot run here: async tasks run on the worker's "
            f"event loop (write them as async def); for sync ones use prefork, threads or solo"
        )
    if name == "broker_pool_size" and (value is None or value == 0):  # Celery's "no pool"
        raise ConfigurationError(
            f"setting {shown} = {value!r}: aiotq always keeps a pool of connections; "
            f"give its size (1 or more), or leave it out"
        )
    if name == "task_protocol" and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigurationError(
            f"setting {shown} = {value!r} is Celery's message version; aiotq sends its own"
            f" messages (task_protocol = 'aiotq'), or Celery's (version 2) with 'celery'"
        )
    if FIELDS[name] is not Any:
        try:
            value = msgspec.convert(value, FIELDS[name], strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"setting {shown}: {exc}") from None
    if name == "task_reject_on_worker_lost" and value is False:
        raise ConfigurationError(
            f"setting {shown} = False cannot be honoured: aiotq always delivers again a task "
            f"whose worker was lost (acks late; dead-lettered after task_max_deliveries); "
            f"leave it out, or set task_acks_late = False to never deliver one twice"
        )
    return value


def resolve(entries: Iterable[tuple[str, str, Any]]) -> dict[str, Any]:
    """(key as written, namespace prefix or "", value) -> {field: checked value}.

    A namespaced key is read without its prefix first (`CELERY_TASK_ALWAYS_EAGER`), then
    whole, as Celery's old name (`CELERY_ALWAYS_EAGER`, which Celery itself ignores under a
    namespace). Every problem is named in one error."""
    problems = _Problems()
    found: dict[str, tuple[str, Any]] = {}  # field -> (key as written, value)
    for key, prefix, value in entries:
        name = (canonical_name(key[len(prefix) :]) if prefix else None) or canonical_name(key)
        if name is None:
            problems.add_unknown(key, prefix)
            continue
        try:
            checked = check_value(name, value, key)
        except ConfigurationError as exc:
            problems.other.append(str(exc))
            continue
        if name in found and found[name][1] != checked:
            problems.other.append(
                f"{found[name][0]!r} and {key!r} both set {name!r}, to different values"
            )
        found[name] = (key, checked)
    problems.raise_any()
    return {name: value for name, (_, value) in found.items()}


class Config:
    """`app.conf`: attribute and mapping access, validated, frozen once the app starts."""

    __slots__ = ("_explicit", "_frozen", "_settings")

    def __init__(self) -> None:
        object.__setattr__(self, "_settings", Settings())
        object.__setattr__(self, "_frozen", False)
        # fields set by name: broker_transport_options never overrides one of these
        object.__setattr__(self, "_explicit", set())

    @property
    def settings(self) -> Settings:
        return self._settings

    def __getattr__(self, key: str) -> Any:
        name = canonical_name(key)
        if name is None:
            entry = unsupported(key)
            if entry is not None:
                message = f"a Celery setting aiotq does not support: {_with_reason(key, entry)}"
                raise AttributeError(message)
            raise AttributeError(f"unknown setting {key!r}")
        return getattr(self._settings, name)

    def __setattr__(self, key: str, value: Any) -> None:
        self.update({key: value})

    __getitem__ = __getattr__
    __setitem__ = __setattr__

    def update(self, values: Mapping[str, Any] | None = None, **kw: Any) -> None:
        pending = resolve((key, "", value) for key, value in {**(values or {}), **kw}.items())
        if pending and self._frozen:
            raise ConfigurationError(
                f"settings are frozen once a worker or producer has started; "
                f"set {', '.join(sorted(pending))} before the first send"
            )
        self._explicit.update(pending)
        derived = self._from_transport_options(pending.get("broker_transport_options"))
        if pending.get("task_protocol") == "celery" and "task_default_queue" not in self._explicit:
            derived["task_default_queue"] = "celery"  # Celery's default queue: shared as is
        for name, value in {**derived, **pending}.items():
            setattr(self._settings, name, value)

    def _from_transport_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """Celery's `broker_transport_options = {"visibility_timeout": 3600}`: the keys with an
        aiotq setting set it, unless that setting was set by its own name."""
        derived: dict[str, Any] = {}
        for option, name in TRANSPORT_OPTIONS.items():
            if options and option in options and name not in self._explicit:
                written = f"broker_transport_options[{option!r}]"
                derived[name] = check_value(name, options[option], written)
        return derived

    def finalize(self) -> Settings:
        """Apply the environment once and freeze. Idempotent."""
        if not self._frozen:
            env = {
                name: os.environ[var] for var, name in ENVIRONMENT.items() if os.environ.get(var)
            }
            self.update(env)
            object.__setattr__(self, "_frozen", True)
        return self._settings

    @property
    def frozen(self) -> bool:
        return self._frozen


def settings_from_object(source: str | object, namespace: str | None = None) -> dict[str, Any]:
    """Read settings from a module path (`"proj.celeryconfig"`, `"django.conf:settings"`),
    an object or a dict: {setting: checked value}, or one error naming every problem.

    With a namespace (`"AIOTQ"`, `"CELERY"`), only keys with that prefix are read (and, for
    CELERY, Celery's old CELERYD_ / CELERYBEAT_ names), and an unknown one is an error.
    Without one, a module's own constants are allowed beside the settings, but a real
    Celery setting name, or a near-miss of one (a typo), is an error.
    """
    obj = _load(source) if isinstance(source, str) else source
    # private names skipped before reading them: Django's override_settings has some that raise
    public = (k for k in dir(obj) if not k.startswith("_"))
    items = obj.items() if isinstance(obj, Mapping) else ((k, getattr(obj, k)) for k in public)
    strict_unknown = isinstance(obj, Mapping)
    prefix = f"{namespace.upper().rstrip('_')}_" if namespace else ""
    entries: list[tuple[str, str, Any]] = []
    for key, value in items:
        if key.startswith("_") or isinstance(value, ModuleType) or inspect.isclass(value):
            continue
        if prefix:
            if key.upper().startswith(prefix):
                entries.append((key, prefix, value))
            elif key.upper().startswith(prefix[:-1]) and _celery_name(key):
                entries.append((key, "", value))  # CELERYD_CONCURRENCY under "CELERY"
        elif strict_unknown or _celery_name(key) or _is_typo(key):
            entries.append((key, "", value))
    return resolve(entries)


def _celery_name(key: str) -> bool:
    return (key.islower() or key.isupper()) and (
        canonical_name(key) is not None or unsupported(key) is not None
    )


def _is_typo(key: str) -> bool:
    if not (key.islower() or key.isupper()):
        return False
    known = [*NAMES, *CELERY_SETTINGS]
    return bool(difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.85))


def _load(path: str) -> object:
    module_name, _, attr = path.partition(":")
    try:
        module: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import settings module {module_name!r}: {exc}") from None
    for part in filter(None, attr.split(".")):
        module = getattr(module, part)
    return module


def parse_rate(rate: str | None) -> float | None:
    """'100/s', '10/m', '5/h' (or a bare number, per second) -> tasks per second."""
    if rate is None:
        return None
    number, _, unit = str(rate).partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        per = None
    if per is None or value <= 0:
        raise ConfigurationError(f"bad rate_limit {rate!r}: use e.g. '100/s', '10/m' or '5/h'")
    return value / per
