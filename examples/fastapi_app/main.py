"""A FastAPI app that sends tasks with `await task.send(...)` on its own event loop.

uvicorn examples.fastapi_app.main:api          # the web app
aiotq worker examples.fastapi_app.tasks:app    # the worker, in another terminal
"""

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from aiotq import AsyncResult
from examples.fastapi_app.tasks import app, send_welcome_email


@asynccontextmanager
async def lifespan(api: FastAPI):  # type: ignore[no-untyped-def]
    yield
    await app.aclose()  # this loop's broker and backend connections


api = FastAPI(lifespan=lifespan)


@api.post("/signup")
async def signup(email: str) -> dict[str, str]:
    result = await send_welcome_email.send(email)  # no thread hop: the app's own loop
    return {"task_id": result.id}


@api.get("/results/{task_id}")
async def read_result(task_id: str, wait: float = 0.0) -> dict[str, Any]:
    """The task's state; with `?wait=5`, wait up to 5 s for it to finish (woken, not polled)."""
    result: AsyncResult[Any] = app.AsyncResult(task_id)
    if wait > 0:
        try:
            await result.get(timeout=wait, propagate=False)
        except TimeoutError:
            raise HTTPException(504, f"task {task_id} not finished after {wait}s") from None
    else:
        await result.refresh()  # in async code, state and result read the last refresh
    value = result.result
    if isinstance(value, BaseException):
        value = repr(value)
    return {"task_id": task_id, "state": result.state, "result": value}
