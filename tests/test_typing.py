"""Static typing: Task[P, R] carries the function's parameters and result type to mypy."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SNIPPET = textwrap.dedent(
    """
    from aiotq import App, AsyncResult

    app = App("typed", broker="memory://")

    @app.task
    async def send_sms(phone: str, text: str) -> str:
        return phone

    @app.task(bind=True, max_retries=3)
    def render(self, doc_id: int) -> bytes:
        return b""

    async def ok() -> None:
        result: AsyncResult[str] = await send_sms.send("+1555", "hi")
        value: str = await result.get(timeout=5)
        rendered: bytes = await (await render.send(3)).get()
        sync_value: str = send_sms.delay("+1", "x").wait(timeout=5)

    async def wrong() -> None:
        await send_sms.send(1, 2)
        number: int = await (await send_sms.send("+1", "x")).get()
        await render.send("not-an-int")
    """
)


def test_mypy_checks_send_arguments_and_result_types(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--hide-error-context",
            "--no-error-summary",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    wrong_start = SNIPPET.splitlines().index("async def wrong() -> None:") + 1
    assert all(n > wrong_start for n in lines), proc.stdout  # the correct code type-checks
    assert len(lines) == 3, proc.stdout  # each wrong line is an error
    assert (
        'Argument 1 to "send" of "Task" has incompatible type "int"; expected "str"' in proc.stdout
    )
    assert (
        'Incompatible types in assignment (expression has type "str", variable has type "int")'
        in proc.stdout
    )
