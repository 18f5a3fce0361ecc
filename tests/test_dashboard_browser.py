"""The dashboard in a real headless Chromium (Selenium), served by uvicorn in subprocesses,
against a real worker subprocess (`aiotq worker tests.apps:tq`) on a SQLite broker.

Also takes the screenshots of the main pages: into a temp dir, or into docs/img (the ones the
README and docs/monitoring.md show) with `make screenshots` (AIOTQ_SCREENSHOTS=docs/img), so
a test run leaves the checkout as it was. Skipped when Chromium is missing, failed instead
under CI=true."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiotq import App

from .apps import build
from .conftest import wait_for
from .workerproc import ROOT, WorkerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = (
    ROOT / os.environ["AIOTQ_SCREENSHOTS"]
    if os.environ.get("AIOTQ_SCREENSHOTS")
    else Path(tempfile.mkdtemp(prefix="aiotq-shots-"))
)
SCRIPT = "<script>alert(1)</script>"
AUTH = ("admin", "pa55word")
POLL_S = 0.05

pytestmark = pytest.mark.timeout(120)


def _need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    message = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVE = """
import sys
from tests.apps import tq
from aiotq.dashboard import serve
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "plain":
    serve(tq, port=port)
else:
    serve(tq, port=port, auth="admin:pa55word", read_only=True)
"""


class Dashboard:
    """`aiotq.dashboard.serve(tests.apps:tq)` in a subprocess on a free port."""

    def __init__(self, broker_url: str, mode: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "AIOTQ_BROKER_URL": broker_url}
        env.pop("AIOTQ_RESULT_BACKEND", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port), mode],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

        def up() -> bool:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise AssertionError(f"dashboard exited: {self.proc.stderr.read().decode()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/healthcheck", timeout=1).text == "OK"
            return False

        wait_for(up, 20)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class Site:
    producer: App
    plain: Dashboard
    guarded: Dashboard  # auth and read-only
    worker: WorkerProcess
    driver: Any


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    url = f"sqlite:///{tmp_path_factory.mktemp('dash')}/broker.db"
    worker = WorkerProcess(url, "-c", "10").ready()  # no -E: pages update from the summary
    plain, guarded = Dashboard(url, "plain"), Dashboard(url, "guarded")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    producer = build(broker=url)
    try:
        yield Site(producer, plain, guarded, worker, driver)
    finally:
        driver.quit()
        producer.close()
        plain.stop()
        guarded.stop()
        worker.stop()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 15.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=POLL_S).until(condition)


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def finished(site: Site, task_id: str) -> None:
    """Wait until the dashboard's history has the task (a worker writes it when it ends)."""

    def there() -> bool:
        response = httpx.get(f"{site.plain.url}/api/tasks/{task_id}", timeout=5)
        return response.status_code == 200 and response.json()["state"] in (
            "SUCCESS", "FAILURE", "REVOKED",
        )  # fmt: skip

    wait_for(there, 20)


def shoot(driver: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"dashboard-{name}.png"))


def confirm(driver: Any) -> None:
    from selenium.webdriver.support import expected_conditions

    wait(driver, expected_conditions.alert_is_present()).accept()


def test_pages_load_and_screenshots(site: Site) -> None:
    driver, base = site.driver, site.plain.url
    sent = [site.producer.send_task("e2e.add", (i, i * 10)) for i in range(6)]
    failed = site.producer.send_task("e2e.fail", ("bad input", 42))
    for result in [*sent, failed]:
        finished(site, result.id)
    site.producer.send_task("e2e.nowhere", ("a task no worker knows",))  # a dead letter
    # long enough to still run when /workers loads on a slow machine; stopped at the end
    sleeper = site.producer.send_task("e2e.sleep", (30, "for the picture"))
    pages = (
        ("overview", "/", "#overview-charts svg"),
        ("workers", "/workers", f'tr[data-active="{sleeper.id}"]'),
        ("tasks", "/tasks", f'tr[data-task="{failed.id}"]'),
        ("task", f"/tasks/{failed.id}", "#task-traceback"),
        ("queues", "/queues", "table.dead tbody tr"),
        (None, "/beat", "#beat-leader"),
        (None, "/settings", "#settings-table"),
    )
    try:
        for name, path, marker in pages:
            driver.get(base + path)

            def shown(d: Any, css: str = marker) -> bool:
                if all_css(d, css):
                    return True
                d.refresh()  # the worker may not hold it or have dead-lettered it yet
                return False

            wait(driver, shown)
            if name is not None:
                shoot(driver, name)
    finally:
        sleeper.revoke(terminate=True)
    finished(site, sleeper.id)
    driver.get(base + "/")
    wait(driver, lambda d: "on" in by_css(d, "#live-status").get_attribute("class"))


def test_filters_narrow_the_table(site: Site) -> None:
    from selenium.webdriver.support.ui import Select

    driver = site.driver
    done = site.producer.send_task("e2e.fail", ("filtered",))
    finished(site, done.id)
    driver.get(site.plain.url + "/tasks")
    rows = all_css(driver, "#task-table tr[data-task]")
    assert {r.get_attribute("data-state") for r in rows} >= {"SUCCESS", "FAILURE"}
    Select(by_css(driver, "select[name=state]")).select_by_value("FAILURE")
    by_css(driver, "input[name=q]").send_keys("filtered")
    by_css(driver, "#apply-filters").click()
    wait(driver, lambda d: "state=FAILURE" in d.current_url)
    rows = all_css(driver, "#task-table tr[data-task]")
    assert [r.get_attribute("data-task") for r in rows] == [done.id]


def test_retry_creates_a_new_task_that_succeeds(site: Site) -> None:
    driver = site.driver
    original = site.producer.send_task("e2e.add", (40, 2))
    finished(site, original.id)
    driver.get(f"{site.plain.url}/tasks/{original.id}")
    by_css(driver, "#retry").click()
    flash = wait(driver, lambda d: all_css(d, "#flash"))[0]
    assert "sent again as" in flash.text
    by_css(driver, "#flash a").click()
    wait(driver, lambda d: "/tasks/" in d.current_url and original.id not in d.current_url)
    new_id = driver.current_url.rsplit("/", 1)[1]
    assert site.producer.AsyncResult(new_id).get(timeout=15) == 42
    # the open page shows the result by itself (live update), no reload; the result backend
    # can say SUCCESS before the history has the record (and so the result) for the page
    wait(driver, lambda d: all_css(d, "#task-result"), timeout=20)
    assert "SUCCESS" in by_css(driver, "#task-state").text
    assert by_css(driver, "#task-result").text == "42"


def test_terminate_a_running_task(site: Site) -> None:
    driver = site.driver
    running = site.producer.send_task("e2e.sleep", (30,))
    driver.get(f"{site.plain.url}/tasks/{running.id}")

    def held(d: Any) -> bool:
        if all_css(d, "#task-held"):
            return True
        d.refresh()  # until the worker has it
        return False

    wait(driver, held)
    by_css(driver, "#terminate").click()
    confirm(driver)
    assert "terminated" in wait(driver, lambda d: all_css(d, "#flash"))[0].text
    wait(driver, lambda d: "REVOKED" in by_css(d, "#task-state").text, timeout=20)


def test_live_updates_without_reload(site: Site) -> None:
    driver = site.driver
    driver.get(site.plain.url + "/tasks")
    wait(driver, lambda d: "on" in by_css(d, "#live-status").get_attribute("class"))
    driver.execute_script("window.__sameDocument = true;")
    late = site.producer.send_task("e2e.add", (123, 456))
    wait(driver, lambda d: all_css(d, f'tr[data-task="{late.id}"]'), timeout=20)
    assert driver.execute_script("return window.__sameDocument === true;")


def test_task_arguments_show_as_text(site: Site) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    driver = site.driver
    result = site.producer.send_task("e2e.fail", (SCRIPT,))
    finished(site, result.id)
    driver.get(f"{site.plain.url}/tasks/{result.id}")
    assert SCRIPT in by_css(driver, "#task-args").text
    driver.get(f"{site.plain.url}/tasks?q=alert")
    assert SCRIPT in by_css(driver, f'tr[data-task="{result.id}"] td.args').text
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018


def _login(driver: Any, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def test_wrong_password_and_read_only(site: Site) -> None:
    driver, base = site.driver, site.guarded.url
    driver.get(base + "/healthcheck")  # needs no login
    assert by_css(driver, "body").text == "OK"
    fetch = """
        const [path, user, password, done] = arguments;
        fetch(path, {headers: {Authorization: "Basic " + btoa(user + ":" + password)}})
          .then(r => done(r.status), e => done(String(e)));
    """
    assert driver.execute_async_script(fetch, "/tasks", AUTH[0], "wrong") == 401
    assert driver.execute_async_script(fetch, "/tasks", "nobody", AUTH[1]) == 401
    assert driver.execute_async_script(fetch, "/tasks", *AUTH) == 200
    try:
        _login(driver, *AUTH)
        driver.get(base + "/tasks")
        wait(driver, lambda d: all_css(d, "#read-only"))
        assert not all_css(driver, "form[method=post]")  # no button anywhere
        status = driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            fetch("/api/queues/default/purge", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"})
              .then(r => done(r.status), e => done(String(e)));
            """
        )
        assert status == 403
    finally:
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_screenshots_exist(site: Site) -> None:
    for name in ("overview", "tasks", "task", "workers", "queues"):
        shot = Path(SHOTS / f"dashboard-{name}.png")
        assert shot.stat().st_size > 10_000, name
        assert time.time() - shot.stat().st_mtime < 600
