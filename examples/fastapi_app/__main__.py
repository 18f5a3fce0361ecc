"""python -m examples.fastapi_app: serve the API with uvicorn beside a worker, call it once."""

import asyncio

import httpx
import uvicorn

from aiotq.app import run
from examples._worker import worker_process
from examples.fastapi_app.main import api


async def main() -> None:
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        signup = await client.post("/signup", params={"email": "ada@example.com"})
        task_id = signup.json()["task_id"]
        print(f"POST /signup -> {signup.json()}")
        done = await client.get(f"/results/{task_id}", params={"wait": 10})
        print(f"GET /results/{task_id}?wait=10 -> {done.json()}")
    server.should_exit = True
    await serving


if __name__ == "__main__":
    with worker_process("examples.fastapi_app.tasks:app"):
        run(main())
