"""python -m examples.periodic [seconds]: a worker with embedded beat (-B) for a while (65 s by
default: two runs of the 30-second entry), then what beat sent."""

import sys
import time
from datetime import UTC, datetime

from aiotq.beat import entries_of
from examples._worker import worker_process
from examples.periodic.tasks import app

if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 65.0
    app.finalize()
    now = datetime.now(UTC)
    for entry in entries_of(app):
        when = entry.schedule.next_after(now).astimezone()
        print(f"{entry.name}: {entry.schedule!r}, next at {when:%a %d %b %H:%M:%S}")
    with worker_process("examples.periodic.tasks:app", "-B"):
        time.sleep(seconds)  # the worker and its beat run on their own meanwhile
    app.close()
