"""Django as Celery users run it: the project in examples/django_project, migrated into a
temporary directory, a real `aiotq worker proj` process on its embedded SQLite broker, and
Django's test Client calling the project's views in this process (the same settings)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiotq import App

from .conftest import CI, wait_for
from .workerproc import ROOT, WorkerProcess

if importlib.util.find_spec("django") is None:
    if CI:
        pytest.fail("CI=true: Django is not installed (a dev dependency)", pytrace=False)
    pytest.skip("Django is not installed: pip install 'django>=4.2'", allow_module_level=True)

PROJECT = ROOT / "examples" / "django_project"


@dataclass
class Project:
    worker: WorkerProcess
    env: dict[str, str]
    client: Any  # django.test.Client
    app: App  # proj.celery.app, as this (web) process imported it


def project_env(data_dir: Path) -> dict[str, str]:
    """The environment a user's shell has: Django's settings module, the project on the path
    (manage.py's directory), nothing of the suite's brokers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOTQ_", "CELERY_"))}
    paths = [str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        DJANGO_SETTINGS_MODULE="proj.settings",
        DEMO_DATA_DIR=str(data_dir),
        PYTHONPATH=os.pathsep.join(paths),
    )
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    data_dir = tmp_path_factory.mktemp("django")
    env = project_env(data_dir)
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    worker = WorkerProcess(None, env=env, app="proj")  # `aiotq worker proj -l info`
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(worker.stop)
        patch = cleanup.enter_context(pytest.MonkeyPatch.context())
        for name in [k for k in os.environ if k.startswith(("AIOTQ_", "CELERY_"))]:
            patch.delenv(name)
        patch.setenv("DJANGO_SETTINGS_MODULE", "proj.settings")
        patch.setenv("DEMO_DATA_DIR", str(data_dir))
        patch.syspath_prepend(str(PROJECT))
        import django
        from django.db import connections
        from django.test import Client
        from django.test.utils import setup_test_environment, teardown_test_environment

        django.setup()  # as `manage.py runserver` does; proj/__init__ imports the App
        cleanup.callback(connections.close_all)
        setup_test_environment()  # lets the Client's host in
        cleanup.callback(teardown_test_environment)
        import proj  # type: ignore[import-not-found]

        app: App = proj.celery_app
        app.set_current()  # the App @shared_task sends through (other tests create Apps)
        cleanup.callback(app.close)
        yield Project(worker.ready(), env, Client(), app)


def test_a_view_sends_on_commit_and_the_worker_updates_the_row(project: Project) -> None:
    from demoapp.models import Order  # type: ignore[import-not-found]

    response = project.client.post("/orders/", {"item": "book"})
    assert response.status_code == 201, response.content
    order_id = response.json()["order"]
    wait_for(lambda: Order.objects.get(pk=order_id).status == "processed", timeout=20)
    assert Order.objects.get(pk=order_id).processed_at is not None
    detail = project.client.get(f"/orders/{order_id}/").json()
    assert detail == {"order": order_id, "item": "book", "status": "processed"}
    # the task module imports its models: the worker set Django up before importing it
    assert "AppRegistryNotReady" not in project.worker.log
    assert project.worker.count(r"demoapp\.tasks\.process_order\[.*\] succeeded") >= 1


def test_the_worker_autodiscovered_the_installed_apps_tasks(project: Project) -> None:
    # nothing imports demoapp.tasks but `app.autodiscover_tasks()` in proj/celery.py
    banner = project.worker.log.split("[tasks]", 1)[1]
    for name in ("demoapp.tasks.count_orders", "demoapp.tasks.process_order"):
        assert f"  . {name}\n" in banner
    assert "  . proj.celery.debug_task" in banner


def test_a_view_sends_with_delay_and_answers_the_task_id(project: Project) -> None:
    from demoapp.models import Order

    response = project.client.get("/orders/count/")
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    result = project.app.AsyncResult(task_id)
    assert result.get(timeout=20) == Order.objects.count()
    assert result.name == "demoapp.tasks.count_orders"  # CELERY_RESULT_EXTENDED = True
    status = project.client.get(f"/tasks/{task_id}/").json()
    assert status == {"task_id": task_id, "state": "SUCCESS", "result": Order.objects.count()}


class Rollback(Exception):
    pass


def test_a_send_in_a_transaction_that_rolls_back_never_runs(project: Project) -> None:
    from demoapp.models import Order
    from demoapp.tasks import process_order  # type: ignore[import-not-found]
    from django.db import transaction

    rolled_back, committed = f"rolled-back-{uuid.uuid4()}", f"committed-{uuid.uuid4()}"
    with contextlib.suppress(Rollback), transaction.atomic():
        order = Order.objects.create(item="never")
        process_order.apply_async_on_commit((order.pk,), task_id=rolled_back)
        raise Rollback
    with transaction.atomic():
        order = Order.objects.create(item="kept")
        process_order.delay_on_commit(order.pk)
        process_order.apply_async_on_commit((order.pk,), task_id=committed)
    assert (
        project.app.AsyncResult(committed).get(timeout=20) == f"order {order.pk}: kept (processed)"
    )
    # the committed send came after the rolled-back one: had that been sent, it was first
    assert project.app.AsyncResult(rolled_back).state == "PENDING"
    assert rolled_back not in project.worker.log
    assert not Order.objects.filter(item="never").exists()


def test_the_projects_celery_settings_load(project: Project) -> None:
    app = App("check", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    assert app.conf.broker_url == f"sqlite:///{project.env['DEMO_DATA_DIR']}/aiotq.db"
    assert app.conf.result_backend == app.conf.broker_url
    assert app.conf.task_track_started is True
    assert app.conf.result_extended is True
    assert app.conf.timezone == "UTC"


def test_a_typo_in_the_celery_settings_stops_the_worker_naming_it(
    project: Project, tmp_path: Path
) -> None:
    (tmp_path / "typo_settings.py").write_text(
        "from proj.settings import *  # noqa: F403\n"
        "CELERY_BROKER_ULR = 'redis://localhost:6379/0'\n"
    )
    env = {
        **project.env,
        "DJANGO_SETTINGS_MODULE": "typo_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), project.env["PYTHONPATH"]]),
    }
    worker = WorkerProcess(None, env=env, app="proj")
    try:
        assert worker.wait(30) != 0
    finally:
        worker.stop()
    assert "unknown setting 'CELERY_BROKER_ULR'; did you mean 'CELERY_BROKER_URL'?" in worker.log
    assert "Traceback" not in worker.log  # one clear line, not a stack


def test_autodiscover_with_a_callable_is_called_at_finalize(project: Project) -> None:
    from django.conf import settings

    calls: list[list[str]] = []

    def installed_apps() -> list[str]:
        calls.append(list(settings.INSTALLED_APPS))
        return settings.INSTALLED_APPS  # type: ignore[no-any-return]

    app = App("lazy", broker="memory://", set_as_current=False)
    app.autodiscover_tasks(installed_apps)  # Celery's `lambda: settings.INSTALLED_APPS`
    assert calls == []
    try:
        app.finalize()  # "demoapp.apps.DemoappConfig" is the package demoapp
        assert calls and "demoapp.apps.DemoappConfig" in calls[0]
        assert "demoapp.tasks.process_order" in app.tasks
    finally:
        app.close()


def test_autodiscover_force_and_related_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "forced_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("imported = True\n")
    (pkg / "jobs.py").write_text("")
    (pkg / "tasks.py").write_text("raise RuntimeError('tasks.py must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = App("forced", broker="memory://", set_as_current=False)
    app.autodiscover_tasks(["forced_pkg"], related_name="jobs", force=True)
    assert "forced_pkg.jobs" in sys.modules  # now, not at finalize
    app.autodiscover_tasks(["forced_pkg"], related_name=None)  # the package only
    try:
        app.finalize()
    finally:
        app.close()
    assert "forced_pkg.tasks" not in sys.modules


def test_autodiscover_without_packages_and_without_django_says_what_to_do() -> None:
    code = (
        "from aiotq import App\n"
        "app = App('x', broker='memory://')\n"
        "app.autodiscover_tasks()\n"
        "app.finalize()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("aiotq.exceptions.ConfigurationError: autodiscover_tasks()"), last
    assert "DJANGO_SETTINGS_MODULE" in last and "autodiscover_tasks(['proj.orders'])" in last


def test_prefork_children_set_django_up(project: Project) -> None:
    from demoapp.tasks import count_orders

    worker = WorkerProcess(None, "--pool", "prefork", "-Q", "prefork", env=project.env, app="proj")
    try:
        worker.ready()
        result = count_orders.apply_async(queue="prefork")
        assert isinstance(result.get(timeout=20), int)
    finally:
        worker.stop()


def test_stale_connections_are_closed_around_each_task(project: Project) -> None:
    """Celery's fixup: with CONN_MAX_AGE 0 the connection a task opened is closed after it,
    so the next task in the same thread starts without it (a restarted database never hands
    a task a dead connection)."""
    from demoapp.tasks import connection_was_open

    worker = WorkerProcess(None, "--threads", "1", "-Q", "one-thread", env=project.env,
                           app="proj")  # fmt: skip
    try:
        worker.ready()
        first = connection_was_open.apply_async(queue="one-thread").get(timeout=20)
        second = connection_was_open.apply_async(queue="one-thread").get(timeout=20)
        assert (first, second) == (False, False)
    finally:
        worker.stop()
