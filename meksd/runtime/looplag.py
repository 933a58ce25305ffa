"""Event-loop lag: how late a task wakes from a sleep of known length.

A trio program that blocks the loop (a long synchronous step, a big GC pause, a
blocking call by mistake) delays every task at once. :class:`LoopLagMonitor` sleeps
until a deadline every :data:`INTERVAL_S` and observes how far past the deadline it
actually woke. On an idle, healthy loop that is well under a millisecond; the
histogram's tail is the worst stall any dashboard or source saw.
"""

from __future__ import annotations

import trio

from meksd.runtime.histogram import Histogram

__all__ = ["INTERVAL_S", "LoopLagMonitor"]

INTERVAL_S = 0.1
"""How often the loop is sampled: ten observations a second, negligible cost."""


class LoopLagMonitor:
    """Observes event-loop lag into ``histogram`` until cancelled."""

    def __init__(self, histogram: Histogram, *, interval_s: float = INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.histogram = histogram
        self.interval_s = interval_s
        self.samples = 0
        """Observations made so far."""
        self.worst = 0.0
        """Largest lag observed so far, in seconds."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample forever: sleep until a deadline, observe how late the wake-up was."""
        task_status.started()
        while True:
            deadline = trio.current_time() + self.interval_s
            await trio.sleep_until(deadline)
            lag = max(0.0, trio.current_time() - deadline)
            self.histogram.observe(lag)
            self.samples += 1
            if lag > self.worst:
                self.worst = lag
