"""How a log line shows a task's value: bounded, never repr'd whole, never failing."""

from __future__ import annotations

import builtins
import reprlib
from itertools import islice
from typing import Any


class ValueRepr(reprlib.Repr):
    """A result as a log shows it: at most `limit` characters, and never repr'd whole (a
    100,000-character result or a million-item list costs what the limit shows)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        # leaves a little over the limit, so any cut shows as the tail "..." below
        self.maxstring = self.maxlong = self.maxother = limit + 3
        # work is bounded by items ** levels: 10 ** 4 leaves at most
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 10
        self.maxdeque = self.maxarray = self.maxdict = 10

    def repr(self, x: Any) -> str:
        try:
            text = super().repr(x)
        except Exception:  # a log line never fails the task (an int of 5,000 digits raises)
            text = f"<{type(x).__name__} that cannot be shown>"
        return text if len(text) <= self.limit else text[: max(self.limit - 3, 0)] + "..."

    def repr_bytes(self, x: bytes, level: int) -> str:  # reprlib would repr all of it
        return builtins.repr(x[: self.maxstring])

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        """In the dict's own order (reprlib sorts it: all of it, and not as a user wrote it)."""
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}"
            for key, value in islice(x.items(), self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"
