"""Signatures: a task call as plain data that can travel inside a message.

This module holds what the core needs (`task.s()`, `task.si()`, `link=`, `link_error=`);
chain, group and chord build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .protocol import SignatureData

if TYPE_CHECKING:
    from .app import App
    from .result import AsyncResult


class Signature:
    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
        app: App | None = None,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self.app = app

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def set(self, **options: Any) -> Signature:
        self.options.update(options)
        return self

    def data(self) -> SignatureData:
        return SignatureData(
            task=self.task,
            args=list(self.args),
            kwargs=self.kwargs,
            options=self.options,
            immutable=self.immutable,
        )

    @classmethod
    def from_data(cls, data: SignatureData, app: App) -> Signature:
        return cls(
            data.task,
            data.args,
            data.kwargs,
            options=data.options,
            immutable=data.immutable,
            app=app,
        )

    def _app(self) -> App:
        if self.app is None:
            raise TypeError(f"signature {self!r} is not bound to an app")
        return self.app

    async def send(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        """Send it; extra args (a parent's result) are prepended unless it is immutable."""
        call_args = self.args if self.immutable else (*args, *self.args)
        call_kwargs = self.kwargs if self.immutable else {**self.kwargs, **(kwargs or {})}
        app = self._app()
        return await app._send(self.task, call_args, call_kwargs, {**self.options, **options})

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        return self._app()._portal.call(self.aapply_async(args, kwargs, **options))

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)
