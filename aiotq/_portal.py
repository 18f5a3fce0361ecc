"""Sync callers (a Django view, a script, a sync task's thread) reach the async core through
one background event loop per App, so connections are pooled across calls instead of a new
loop and connection per `delay()`. The async path is the only implementation; this only
delegates to it.

A portal belongs to one process: after `os.fork()` (gunicorn --preload, uWSGI without
lazy-apps, multiprocessing) the child has no portal thread, so its first call starts a loop
of its own, and with it connections of its own (clients are per loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loops import reset_after_fork

T = TypeVar("T")


class Portal:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        reset_after_fork(self)

    def _forked(self) -> None:
        """In a fork's child: the loop's thread did not come along (a call would wait for it
        for ever) and the lock may have been held by another thread. The parent's loop and
        its connections are kept, never used nor closed: they are the parent's sockets."""
        if self._loop is not None:
            self._inherited = self._loop  # the parent's: kept, never run nor closed
        self._lock = threading.Lock()
        self._loop = self._thread = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking aiotq call was made on its own portal loop; await it")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(
                    target=run, name=f"aiotq-portal-{self._name}", daemon=True
                )
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def close(self, cleanup: Coroutine[Any, Any, None] | None = None) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            if cleanup is not None:
                cleanup.close()
            return
        if cleanup is not None:
            asyncio.run_coroutine_threadsafe(cleanup, loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
