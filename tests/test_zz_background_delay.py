"""Last in the suite: the 90-second RabbitMQ delay sent at its start ran on time."""

from __future__ import annotations

import re
import time
from datetime import datetime

from .conftest import BackgroundDelay, wait_for


def test_the_90_second_delay_ran_within_two_seconds_of_due(
    background_delay: BackgroundDelay,
) -> None:
    worker = background_delay.worker
    pattern = re.compile(
        r"^\[(\S+ \S+): INFO/MainProcess\] Task e2e\.now\["
        + background_delay.task_id
        + r"\] received"
    )

    def received() -> float | None:
        for line in list(worker.lines):
            match = pattern.match(line)
            if match:
                return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return None

    wait_for(received, max(5.0, background_delay.due - time.time() + 10))
    started = received()
    assert started is not None
    late = started - background_delay.due
    assert -0.01 <= late <= 2.0, late  # not early, within two seconds
