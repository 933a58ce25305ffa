"""What every source is: the ``Source`` interface, its statistics, shared helpers.

A source reads one upstream feed and pushes what it reads, untouched, as
``RawRecord`` values into the room's bounded raw channel. It never parses (the
normalizer does), never buffers (``await send.send(...)`` blocking *is* the
backpressure), and never lets bad network or feed conditions escape ``run``: it logs
them and retries with backoff. Errors from the channel itself (the room closed it)
do propagate: they mean the room is going away.

The caller owns the channel: a source never closes ``send``. A room hands each
source a :class:`RecordSink` of its own (``meksd.runtime.failover``), which forwards
to the room's channel while that source is the active one; a plain
``trio.MemorySendChannel`` is a ``RecordSink`` too.

A source paces its retries with its own backoff, stretched by :class:`Pacing` once
the room's stream has ended, so that an ended room does not hammer its feed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, runtime_checkable

import attrs
import trio

from meksd.model.raw import RawRecord

__all__ = [
    "Jitter",
    "Pacing",
    "RecordSink",
    "Source",
    "SourceMeter",
    "SourceState",
    "SourceStatistics",
    "full_jitter_delay",
]

SourceState = Literal["connecting", "connected", "backoff", "finished"]


@attrs.frozen
class SourceStatistics:
    """A snapshot of one source's counters, as returned by ``Source.statistics()``."""

    name: str
    """The source's name, e.g. ``"websocket:0"`` (kind and index in the room)."""
    state: SourceState
    """``connecting``: opening its feed; ``connected``: delivering (or ready to);
    ``backoff``: waiting before the next attempt after a failure; ``finished``: a
    finite feed (a replay without ``loop``) reached its end; ``run`` has returned."""
    records: int
    """Raw records the room's channel has taken since the source started."""
    connects: int
    """Times the feed was opened successfully (WebSocket handshakes, replay passes)."""
    failures: int
    """Times the source went into backoff: failed connects, dropped connections,
    unreadable files."""
    last_record_at: float | None
    """``trio.current_time()`` when the latest record was read; None before the first."""
    last_error: str | None
    """Why the latest failure happened, for operators; None if none yet."""
    failures_in_a_row: int = 0
    """Failures since the source last read a record (0 right after one)."""


class RecordSink(Protocol):
    """Where a source puts what it reads (a ``trio.MemorySendChannel`` is one)."""

    async def send(self, value: RawRecord, /) -> None:
        """Hand over one record, waiting while the room cannot take it (backpressure).

        A checkpoint, as trio's own ``send`` is. Raises ``trio.BrokenResourceError``
        or ``trio.ClosedResourceError`` when the room has gone away.
        """
        ...


@runtime_checkable
class BatchSink(Protocol):
    """A :class:`RecordSink` that also takes several records in one call."""

    async def send(self, value: RawRecord, /) -> None: ...

    async def send_batch(self, values: Sequence[RawRecord], /) -> None:
        """Hand over ``values`` in order, as ``send`` would one by one.

        Not a checkpoint when the room takes them all at once (a cancellation is
        still delivered): the read that produced them was one, and a second per read
        would cost a task switch per event in a quiet room. Waits (a checkpoint)
        while the room's channel is full."""
        ...


class Source(Protocol):
    """One upstream feed of one room."""

    @property
    def name(self) -> str:
        """``"<kind>:<index>"``: unique within the room, used in logs and metrics."""
        ...

    async def run(
        self,
        send: RecordSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read the feed and push raw records into ``send`` until cancelled.

        Reports started at once (connecting is the source's own business). Returns
        only when a finite feed is exhausted. Does not close ``send``.
        """
        ...

    def statistics(self) -> SourceStatistics:
        """The source's counters now. Synchronous; never checkpoints."""
        ...


class Jitter(Protocol):
    """The part of ``random.Random`` that backoff needs (injectable for tests)."""

    def uniform(self, a: float, b: float, /) -> float: ...


def _never() -> bool:
    return False


def _now_or_earlier() -> float:
    return -math.inf


@attrs.frozen
class Pacing:
    """How long a source really waits before its next attempt or poll.

    While ``ended()`` is true (the room's stream ended), a source waits at least a
    delay drawn uniformly from ``[ended_backoff_s / 2, ended_backoff_s]`` instead of
    its usual pace: an ended room does not hammer its feed, and a restarted stream
    is still noticed within ``ended_backoff_s``.
    """

    ended: Callable[[], bool] = _never
    """Whether the room's stream has ended (read at each wait)."""
    ended_backoff_s: float = 60.0
    read_after: Callable[[], float] = _now_or_earlier
    """When a push source should read its next message (``trio.current_time()``
    clock; ``-inf`` or a past time: now). The room's actor says its next tick: what
    arrives within a tick of a publish is read in one batch at the tick instead of
    one wake-up per message (see :meth:`before_read`)."""

    async def before_read(self) -> bool:
        """Wait until the room wants the next message (no checkpoint when it does now:
        the read that follows is one). Whether it waited."""
        due = self.read_after()
        if due > trio.current_time():
            await trio.sleep_until(due)
            return True
        return False

    def delay(self, usual: float, rng: Jitter) -> float:
        """The wait before the next attempt, given the source's ``usual`` one."""
        if not self.ended():
            return usual
        return max(usual, rng.uniform(self.ended_backoff_s / 2, self.ended_backoff_s))


def full_jitter_delay(attempt: int, initial: float, maximum: float, rng: Jitter) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(maximum, initial·2^attempt)].

    ``attempt`` counts failures since the last success, from 0.
    """
    bound = min(maximum, initial * 2.0 ** min(attempt, 64))
    return rng.uniform(0.0, bound)


@attrs.define
class SourceMeter:
    """A source's mutable counters, and the factory of its records."""

    name: str
    state: SourceState = "connecting"
    records: int = 0
    connects: int = 0
    failures: int = 0
    last_record_at: float | None = None
    last_error: str | None = None
    failures_in_a_row: int = 0

    def stamp(self, payloads: Sequence[bytes | str]) -> list[RawRecord]:
        """Wrap ``payloads``, read together now (and note the time as ``last_record_at``)."""
        now = trio.current_time()
        wall_ms = int(time.time() * 1000)
        self.last_record_at = now
        self.failures_in_a_row = 0
        return [RawRecord(p, now, wall_ms, self.name) for p in payloads]

    async def push(self, send: RecordSink, payload: bytes | str) -> None:
        """Stamp ``payload``, wait until the room's channel takes it, then count it.

        Waiting here is the backpressure. Always a checkpoint (``send``'s), so a
        source that pushes record by record lets the rest of the process run. Channel
        errors (the room closed its end) propagate.
        """
        (record,) = self.stamp((payload,))
        await send.send(record)
        self.records += 1

    async def push_all(self, send: RecordSink, payloads: Sequence[bytes | str]) -> None:
        """Stamp ``payloads`` (read together: one time) and hand them over in order.

        With a :class:`BatchSink` the batch goes in one call (no checkpoint when the
        room takes it all at once); otherwise one ``send`` each.
        """
        records = self.stamp(payloads)
        # Not isinstance(send, BatchSink): a runtime protocol check costs microseconds
        # per read, as much as the rest of this method.
        send_batch = getattr(send, "send_batch", None)
        if send_batch is not None:
            await send_batch(records)
            self.records += len(records)
            return
        for record in records:
            await send.send(record)
            self.records += 1

    def fail(self, reason: str) -> None:
        """Count a failure and remember why."""
        self.failures += 1
        self.last_error = reason
        self.failures_in_a_row += 1

    def snapshot(self) -> SourceStatistics:
        """The counters as a frozen record."""
        return SourceStatistics(
            name=self.name,
            state=self.state,
            records=self.records,
            connects=self.connects,
            failures=self.failures,
            last_record_at=self.last_record_at,
            last_error=self.last_error,
            failures_in_a_row=self.failures_in_a_row,
        )
