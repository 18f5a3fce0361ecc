"""Settings, URLs and app configuration as Celery users write them."""

from __future__ import annotations

import sys
import types
from datetime import timedelta

import pytest

from aiotq import App, ConfigurationError
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


def test_autodiscover_imports_tasks_modules_lazily(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
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
