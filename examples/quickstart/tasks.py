"""The tutorial's first tasks. No broker configured: the embedded SQLite file ./aiotq.db."""

from aiotq import App

app = App("quickstart")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)
