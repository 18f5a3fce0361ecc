"""Settings, URLs and app configuration as Celery users write them."""

from __future__ import annotations

import sys
import types
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from aiotq import App, ConfigurationError
from aiotq.celery_settings import CELERY_SETTINGS, Unsupported
from aiotq.settings import Settings
from aiotq.urls import mask_password


def test_defaults_and_keyword_settings() -> None:
    app = App("t", broker="memory://", task_serializer="msgpack", result_expires=timedelta(hours=1))
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.result_expires_s == 3600.0
    assert app.conf.result_expires == 3600.0  # Celery's unit-less name reads too
    assert app.conf.task_default_queue == "default"


def test_unknown_setting_is_rejected_with_a_hint() -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown setting 'task_serialiser'.*task_serializer"
    ):
        App("t", task_serialiser="json")
    app = App("t")
    with pytest.raises(ConfigurationError, match="worker_concurency.*worker_concurrency"):
        app.conf.worker_concurency = 5


def test_bad_value_names_the_setting() -> None:
    app = App("t")
    with pytest.raises(ConfigurationError, match="worker_concurrency"):
        app.conf.worker_concurrency = "many"
    with pytest.raises(ConfigurationError, match="task_serializer"):
        app.conf.task_serializer = "pickle"


def test_assignment_is_validated_and_frozen_after_start() -> None:
    app = App("t", broker="memory://")
    app.conf.beat_schedule = {"mul-every-30-seconds": {"task": "proj.mul", "schedule": 30.0}}
    app.conf["worker_concurrency"] = 7
    assert app.conf.worker_concurrency == 7
    app.finalize()
    with pytest.raises(ConfigurationError, match="frozen"):
        app.conf.worker_concurrency = 8


def test_config_from_old_style_celery_module() -> None:
    """The seed tutorial's celeryconfig.py, with its imports and old uppercase names."""
    module = types.ModuleType("seed_celeryconfig")
    module.__dict__.update(
        BROKER_URL="redis://localhost:6379/0",
        CELERY_RESULT_BACKEND="redis://localhost:6379/1",
        CELERY_TASK_SERIALIZER="msgpack",
        CELERY_RESULT_SERIALIZER="json",
        CELERY_ACCEPT_CONTENT=["msgpack", "json"],
        CELERY_ROUTES={"projb.tasks.mul": {"queue": "feed_task", "routing_key": "mul.feed"}},
        CELERYBEAT_SCHEDULE={"mul-every-30-seconds": {"task": "projc.tasks.mul", "schedule": 30.0}},
        RABBITMQ_IP="127.0.0.1",  # the module's own constant: allowed beside settings
        absolute_import=object(),
        timedelta=timedelta,
    )
    sys.modules["seed_celeryconfig"] = module
    try:
        app = App("proj")
        app.config_from_object("seed_celeryconfig")
    finally:
        del sys.modules["seed_celeryconfig"]
    assert app.conf.broker_url == "redis://localhost:6379/0"
    assert app.conf.result_backend == "redis://localhost:6379/1"
    assert app.conf.task_serializer == "msgpack"
    assert app.conf.accept_content == ["msgpack", "json"]
    assert app.conf.task_routes["projb.tasks.mul"]["queue"] == "feed_task"
    assert "mul-every-30-seconds" in app.conf.beat_schedule


def test_config_from_object_typo_in_module_is_an_error() -> None:
    settings = types.SimpleNamespace(broker_ulr="redis://x")
    with pytest.raises(ConfigurationError, match="broker_ulr.*broker_url"):
        App("t").config_from_object(settings)


def test_django_style_namespace() -> None:
    django_settings = types.SimpleNamespace(
        DEBUG=True,
        INSTALLED_APPS=["x"],
        AIOTQ_BROKER_URL="redis://localhost:6379/3",
        AIOTQ_RESULT_BACKEND="redis://localhost:6379/4",
        AIOTQ_TASK_SERIALIZER="json",
    )
    app = App("django")
    app.config_from_object(django_settings, namespace="AIOTQ")
    assert app.conf.broker_url == "redis://localhost:6379/3"
    assert app.conf.result_backend == "redis://localhost:6379/4"
    with pytest.raises(ConfigurationError, match="AIOTQ_BROKER_ULR"):
        App("d").config_from_object({"AIOTQ_BROKER_ULR": "x"}, namespace="AIOTQ")


def test_config_from_dict_rejects_unknown() -> None:
    with pytest.raises(ConfigurationError, match="nonsense"):
        App("t").config_from_object({"nonsense": 1})


def test_environment_overrides_at_finalize(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App("t", broker="memory://a")
    monkeypatch.setenv("AIOTQ_BROKER_URL", "memory://from-env")
    monkeypatch.setenv("AIOTQ_RESULT_BACKEND", "memory://results")
    app.finalize()
    assert app.broker.url == "memory://from-env"
    assert app.backend.url == "memory://results"


def test_unknown_scheme_suggests_the_right_one() -> None:
    app = App("t", broker="rediss2://:secret@localhost/0")
    with pytest.raises(ConfigurationError, match="unknown broker scheme") as info:
        app.finalize()
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="did you mean redis://"):
        App("t", broker="rdis://localhost").finalize()
    with pytest.raises(ConfigurationError, match="not a URL"):
        App("t", broker="localhost:6379").finalize()


def test_backend_defaults_to_the_broker_url() -> None:
    app = App("t", broker="redis://localhost:6379/5")
    assert app.backend.url == "redis://localhost:6379/5"


def test_mask_password() -> None:
    assert (
        mask_password("amqp://guest:guest@localhost:5672//") == "amqp://guest:**@localhost:5672//"
    )
    assert mask_password("redis://:s3cret@h:6379/0") == "redis://:**@h:6379/0"
    assert mask_password("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert "s3cret" not in repr(App("t", broker="redis://:s3cret@h:6379/0").broker)


def test_autodiscover_imports_tasks_modules_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "mycelery_pkg"
    (pkg / "sms").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(
        "from aiotq import App\n"
        "app = App('luffy', broker='memory://')\n"
        "app.autodiscover_tasks(['mycelery_pkg.sms', 'mycelery_pkg.cache'])\n"
    )
    (pkg / "sms" / "__init__.py").write_text("")
    (pkg / "sms" / "tasks.py").write_text(
        "from mycelery_pkg.main import app\n@app.task\ndef send_sms(mobile, code):\n    return 'ok'\n"
    )
    (pkg / "cache.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mycelery_pkg.main import app  # type: ignore[import-not-found]

    assert "mycelery_pkg.sms.tasks.send_sms" not in app.tasks
    app.finalize()
    assert "mycelery_pkg.sms.tasks.send_sms" in app.tasks


# -- Celery's setting names ------------------------------------------------------------------


class DjangoSettings:
    """A Django settings module as Celery's docs write it, read with namespace="CELERY"."""

    DEBUG = True
    INSTALLED_APPS = ["django.contrib.admin", "shop"]
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3"}}
    CELERY_BROKER_URL = "redis://localhost:6379/0"
    CELERY_RESULT_BACKEND = "redis://localhost:6379/1"
    CELERY_RESULT_EXTENDED = True
    CELERY_TASK_ANNOTATIONS = {"shop.tasks.charge": {"rate_limit": "10/s"}}
    CELERY_TASK_ALWAYS_EAGER = True
    CELERY_TASK_EAGER_PROPAGATES = True
    CELERY_TASK_REJECT_ON_WORKER_LOST = True
    CELERY_WORKER_MAX_TASKS_PER_CHILD = 100
    CELERY_WORKER_MAX_MEMORY_PER_CHILD = 200_000
    CELERY_WORKER_POOL = "prefork"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "priority_steps": [0, 3]}
    CELERY_WORKER_SEND_TASK_EVENTS = True
    CELERY_TASK_TIME_LIMIT = 30 * 60


def test_django_settings_with_celery_namespace_load() -> None:
    app = App("shop")
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert app.conf.broker_url == "redis://localhost:6379/0"
    assert app.conf.result_extended is True
    assert app.conf.task_annotations == {"shop.tasks.charge": {"rate_limit": "10/s"}}
    assert app.conf.task_always_eager is True
    assert app.conf.task_eager_propagates is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_max_tasks_per_child == 100
    assert app.conf.worker_max_memory_per_child == 200_000
    assert app.conf.worker_pool == "prefork"
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_time_limit_s == 1800.0
    # Celery's visibility timeout is the broker's: a task unacknowledged that long goes back
    assert app.conf.broker_visibility_timeout_s == 3600.0
    assert app.broker.visibility_timeout_s == 3600.0  # type: ignore[attr-defined]
    assert app.conf.broker_transport_options["priority_steps"] == [0, 3]  # accepted, unused


def test_celery_old_uppercase_names_load() -> None:
    module = types.ModuleType("old_celeryconfig")
    module.__dict__.update(
        BROKER_URL="memory://",
        CELERY_ALWAYS_EAGER=True,
        CELERY_EAGER_PROPAGATES_EXCEPTIONS=True,
        CELERYD_MAX_TASKS_PER_CHILD=50,
        CELERYD_MAX_MEMORY_PER_CHILD=12_000,
        CELERYD_POOL="processes",  # Celery's other name for prefork
        CELERY_RESULT_EXTENDED=True,
        CELERY_ANNOTATIONS={"*": {"rate_limit": "5/s"}},
        CELERY_REJECT_ON_WORKER_LOST=True,
        BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 120},
        CELERY_SEND_EVENTS=True,
        CELERYD_TASK_SOFT_TIME_LIMIT=timedelta(seconds=90),
        CELERY_TASK_RESULT_EXPIRES=600,
    )
    app = App("old")
    app.config_from_object(module)
    assert app.conf.task_always_eager is True
    assert app.conf.task_eager_propagates is True
    assert app.conf.worker_max_tasks_per_child == 50
    assert app.conf.worker_max_memory_per_child == 12_000
    assert app.conf.worker_pool == "prefork"
    assert app.conf.result_extended is True
    assert app.conf.task_annotations == {"*": {"rate_limit": "5/s"}}
    assert app.conf.broker_visibility_timeout_s == 120.0
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_soft_time_limit_s == 90.0
    assert app.conf.result_expires_s == 600.0


def test_old_names_load_under_the_celery_namespace_too() -> None:
    """Celery itself ignores CELERY_ALWAYS_EAGER under namespace="CELERY"; aiotq reads it."""
    settings = types.SimpleNamespace(
        CELERY_ALWAYS_EAGER=True,
        CELERYD_MAX_TASKS_PER_CHILD=10,
        CELERYBEAT_SCHEDULE={"tick": {"task": "shop.tick", "schedule": 5.0}},
        CELERY_DEFAULT_QUEUE="shop",
    )
    app = App("shop")
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.task_always_eager is True
    assert app.conf.worker_max_tasks_per_child == 10
    assert "tick" in app.conf.beat_schedule
    assert app.conf.task_default_queue == "shop"


def test_unsupported_celery_settings_are_all_named_in_one_error() -> None:
    class WithCeleryOnly(DjangoSettings):
        CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
        CELERY_WORKER_HIJACK_ROOT_LOGGER = False
        CELERY_TASK_PROTOCOL = 2

    with pytest.raises(ConfigurationError) as info:
        App("shop").config_from_object(WithCeleryOnly, namespace="CELERY")
    message = str(info.value)
    assert message.startswith("Celery settings aiotq does not support: ")
    for key in (
        "CELERY_BEAT_SCHEDULER",
        "CELERY_WORKER_HIJACK_ROOT_LOGGER",
        "CELERY_TASK_PROTOCOL",
    ):
        assert repr(key) in message
    assert "django_celery_beat's cannot run" in message  # the reason
    assert "did you mean" not in message
    assert "\n" not in message


def test_one_unsupported_celery_setting_says_so_plainly() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"^a Celery setting aiotq does not support: 'worker_hijack_root_logger' \(",
    ):
        App("t", worker_hijack_root_logger=False)
    module = types.ModuleType("celeryconfig_with_beat")
    module.__dict__.update(BROKER_URL="memory://", CELERYBEAT_SCHEDULER="x.y:Scheduler")
    with pytest.raises(ConfigurationError, match="does not support: 'CELERYBEAT_SCHEDULER'"):
        App("t").config_from_object(module)


def test_no_real_celery_name_gets_a_did_you_mean() -> None:
    for name, meaning in CELERY_SETTINGS.items():
        if isinstance(meaning, Unsupported):
            with pytest.raises(ConfigurationError) as info:
                App("t").conf.update({name: 1})
            assert "does not support" in str(info.value), name
            assert "did you mean" not in str(info.value), name
        else:  # it sets a real aiotq setting
            assert meaning in {f.name for f in msgspec.structs.fields(Settings)}, name


def test_typos_of_celery_names_still_get_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'CELERY_BROKER_URL'"):
        App("d").config_from_object({"CELERY_BROKER_ULR": "x"}, namespace="CELERY")
    with pytest.raises(ConfigurationError, match="did you mean 'CELERYD_MAX_TASKS_PER_CHILD'"):
        App("d").config_from_object({"CELERYD_MAX_TASK_PER_CHILD": 5})
    with pytest.raises(
        ConfigurationError,
        match=r"did you mean 'beat_scheduler'\? \(a Celery setting aiotq does not support\)",
    ):
        App("t", beat_schedular="x")


def test_task_reject_on_worker_lost_false_is_refused_with_the_reason() -> None:
    assert App("t", task_reject_on_worker_lost=True).conf.task_reject_on_worker_lost is True
    assert App("t", task_reject_on_worker_lost=None).conf.task_reject_on_worker_lost is None
    with pytest.raises(
        ConfigurationError, match=r"'task_reject_on_worker_lost' = False cannot be honoured"
    ) as info:
        App("t", task_reject_on_worker_lost=False)
    assert "always delivers again a task whose worker was lost" in str(info.value)
    assert "\n" not in str(info.value)


def test_transport_options_never_override_a_visibility_timeout_set_by_name() -> None:
    options = {"visibility_timeout": 3600, "max_connections": 20, "global_keyprefix": "x"}
    app = App("t", broker_visibility_timeout_s=30, broker_transport_options=options)
    assert app.conf.broker_visibility_timeout_s == 30.0
    assert app.conf.broker_pool_size == 20
    later = App("t", broker_visibility_timeout=45)
    later.conf.broker_transport_options = options
    assert later.conf.broker_visibility_timeout_s == 45.0
    with pytest.raises(ConfigurationError, match=r"broker_transport_options\['visibility_timeout'"):
        App("t", broker_transport_options={"visibility_timeout": "an hour"})


def test_two_names_of_one_setting_with_different_values_is_an_error() -> None:
    settings = {"CELERY_ALWAYS_EAGER": True, "CELERY_TASK_ALWAYS_EAGER": False}
    with pytest.raises(ConfigurationError, match="both set 'task_always_eager'"):
        App("t").config_from_object(settings, namespace="CELERY")


def test_a_pool_aiotq_cannot_run_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="pool 'gevent' cannot run here.*async def"):
        App("t", worker_pool="gevent")
    with pytest.raises(ConfigurationError, match="'CELERYD_CONCURRENCY' \\(aiotq's"):
        App("t", CELERYD_CONCURRENCY="many")


def test_celery_broker_pool_limit_sets_the_pool_size() -> None:
    assert App("t", BROKER_POOL_LIMIT=3).conf.broker_pool_size == 3
    with pytest.raises(ConfigurationError, match="always keeps a pool of connections"):
        App("t", broker_pool_limit=None)  # Celery's "no pool"
