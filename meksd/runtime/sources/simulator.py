"""The ``simulator`` source: the trio shell around ``FeedGenerator``.

Every tick (10 ms) it asks the generator for the envelopes due since the feed started
and pushes each, orjson-encoded, as one raw record. Rates far above one event per
tick work because a tick emits however many are due. If the room applies
backpressure, the loop simply falls behind and the generator hands out what is owed
(at most about a second's worth) on the next tick. The simulator is the embedded
default source, so ``meksd run`` works with no network and no files.
"""

from __future__ import annotations

import math
import time

import orjson
import trio
from loguru import logger

from meksd.config import SimulatorSourceConfig
from meksd.runtime.sources.base import RecordSink, SourceMeter, SourceStatistics
from meksd.runtime.sources.feedgen import FeedGenerator

__all__ = ["SimulatorSource"]

TICK_S = 0.01


class SimulatorSource:
    """Feeds a room from the built-in generator; never finishes."""

    def __init__(
        self,
        config: SimulatorSourceConfig,
        *,
        name: str = "simulator",
        room_id: str = "",
        tick_s: float = TICK_S,
    ) -> None:
        self._config = config
        self._tick_s = tick_s
        self._meter = SourceMeter(name)
        self._log = logger.bind(room=room_id, source=name)

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        """The source's counters now. Synchronous; never checkpoints."""
        return self._meter.snapshot()

    async def run(
        self,
        send: RecordSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Generate and push the simulated feed until cancelled."""
        generator = FeedGenerator(self._config, wall_ms_at_zero=int(time.time() * 1000))
        start = trio.current_time()
        self._meter.connects += 1
        self._meter.state = "connected"
        self._log.bind(event="source_connected").info(
            "simulating a feed at {rate}/s (bursts {burst_rate}/s)",
            rate=self._config.rate,
            burst_rate=self._config.burst_rate,
        )
        task_status.started()
        tick = 0
        while True:
            elapsed = trio.current_time() - start
            for envelope in generator.next_batch(elapsed):
                await self._meter.push(send, orjson.dumps(envelope))
            # The next tick boundary after now (skipping ticks missed to backpressure),
            # and always a later one than last time, whatever float rounding does.
            elapsed = trio.current_time() - start
            tick = max(tick + 1, math.floor(elapsed / self._tick_s) + 1)
            await trio.sleep_until(start + tick * self._tick_s)
