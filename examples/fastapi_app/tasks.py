"""Tasks of a web app: the worker runs `aiotq worker examples.fastapi_app.tasks:app`."""

import asyncio

from aiotq import App

app = App("web")


@app.task(max_retries=3, retry_backoff=True, autoretry_for=(ConnectionError,))
async def send_welcome_email(address: str) -> str:
    await asyncio.sleep(0.05)  # stands in for an awaited SMTP or HTTP API call
    return f"welcome mail sent to {address}"
