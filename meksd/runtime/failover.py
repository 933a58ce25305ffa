"""A room's sources, with failover: the trio shell around ``meksd.core.failover``.

::

    source 0 ──outlet 0──┐
    source 1 ──outlet 1──┼──▶ raw channel (ingest_queue) ──▶ normalizer
    source 2 (not running)

:class:`SourceSelector` runs the *active* source and every source preferred to it
(the probes, which keep retrying in the background); later sources do not run. Each
running source writes into its own *outlet*. An outlet reports every record to the
core (``on_record``), then forwards it to the room's channel only if its source is
the active one; a record from a probe is what takes that probe back (failback),
and is forwarded. A monitor wakes at least every :data:`CHECK_S` seconds, notes new
failures in the sources' statistics (``on_failure``) and checks for a stall
(``on_tick``). The decisions come back as ``Switch`` and ``Restart`` values; this
module only starts and cancels source tasks, counts and logs.

Forwarding is ``send_nowait`` first and a blocking ``send`` only when the channel is
full: that wait is the backpressure on the feed (a source blocked here stops
reading), and its duration is counted (``RoomCounters.ingest_wait_s``). Either way
an outlet's ``send`` has the semantics of ``trio.MemorySendChannel.send``: if it is
cancelled, the record was not sent (with the room's :class:`~meksd.runtime.room.Ingest`,
whatever of its events had not gone into the inbox yet).

A cancelled source task is waited for before the same source runs again, so one
source object never runs twice at once. A source whose ``run`` raises (a bug) is
logged, counted as a failure and restarted with backoff; only its own task is
affected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio
from loguru import logger

from meksd.core.failover import (
    Action,
    Policy,
    Restart,
    Selection,
    Switch,
    on_failure,
    on_finished,
    on_record,
    on_tick,
    stall_deadline,
    start,
)
from meksd.model.raw import RawRecord
from meksd.model.state import LiveStatus
from meksd.runtime.grid import next_on_grid
from meksd.runtime.sources.base import Source
from meksd.runtime.stats import RoomCounters

__all__ = ["CHECK_S", "CRASH_BACKOFF_S", "RecordChannel", "SourceSelector"]

CHECK_S = 0.25
"""The monitor looks at the sources' failure counts at least this often, at the
multiples of ``CHECK_S`` on trio's clock (shared by every room's monitor)."""
CRASH_BACKOFF_S = (0.5, 2.0, 5.0, 15.0)
"""Delays before restarting a source whose ``run`` raised, by consecutive crashes."""


class RecordChannel(Protocol):
    """Where the selector forwards the active source's records: the part of a
    ``trio.MemorySendChannel[RawRecord]`` it uses (the room's ``Ingest``)."""

    def send_nowait(self, value: RawRecord, /) -> None: ...

    async def send(self, value: RawRecord, /) -> None: ...

    def statistics(self) -> trio.MemoryChannelStatistics: ...


@attrs.define
class _Task:
    """One run of one source: its cancel scope and when it has fully finished."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


class _Outlet:
    """Where one source writes: the selector decides whether its records go on."""

    def __init__(self, selector: SourceSelector, index: int) -> None:
        self._selector = selector
        self._index = index

    async def send(self, value: RawRecord, /) -> None:
        """Hand ``value`` to the room if this source is (or just became) the active
        one; otherwise drop it. Blocks while the room's channel is full. Always a
        checkpoint: a source that pushes record by record (a replay at full speed)
        must not hold the loop until the room's channel fills."""
        await self._selector._forward_batch(self._index, (value,), checkpoint=True)

    async def send_batch(self, values: Sequence[RawRecord], /) -> None:
        """``send`` for records read together; no checkpoint when the room's channel
        takes them all at once (see :class:`~meksd.runtime.sources.base.BatchSink`)."""
        await self._selector._forward_batch(self._index, values, checkpoint=False)


class SourceSelector:
    """Runs one room's sources in failover order (see the module doc)."""

    def __init__(
        self,
        room_id: str,
        sources: Sequence[Source],
        *,
        policy: Policy,
        watch: Sequence[bool],
        live: Callable[[], LiveStatus],
        counters: RoomCounters,
    ) -> None:
        """``watch[i]``: whether source ``i`` can stall (network sources); ``live``
        reads the room's live status; ``counters`` gets failovers, failbacks,
        stalls, dropped records and the time spent blocked on the channel."""
        if len(watch) != len(sources):
            raise ValueError("one watch flag per source")
        self.sources = list(sources)
        self.policy = policy
        self.counters = counters
        self._watch = tuple(watch)
        self._live = live
        self._log = logger.bind(room=room_id)
        self._selection: Selection | None = None
        self._raw: RecordChannel | None = None
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[int, _Task] = {}
        self._last: dict[int, _Task] = {}
        self._outlets = [_Outlet(self, i) for i in range(len(self.sources))]
        self._seen_failures = [0] * len(self.sources)

    # --- what others read -------------------------------------------------------

    @property
    def active(self) -> int:
        """Index of the source whose records reach the room (0 before ``run``)."""
        return 0 if self._selection is None else self._selection.active

    @property
    def selection(self) -> Selection | None:
        """The core's failover state (None before ``run``)."""
        return self._selection

    def running(self) -> frozenset[int]:
        """Indexes of the sources whose tasks run now (the active one and probes)."""
        return frozenset(self._tasks)

    # --- lifecycle --------------------------------------------------------------

    async def run(
        self,
        send: RecordChannel,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the sources into ``send`` until cancelled. Does not close ``send``."""
        if not self.sources:
            task_status.started()
            return
        self._raw = send
        self._selection = start(self._watch, trio.current_time())
        self._seen_failures = [s.statistics().failures for s in self.sources]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._sync(frozenset())
                task_status.started()
                await self._monitor()
        finally:
            self._nursery = None
            self._tasks.clear()
            self._last.clear()

    async def _monitor(self) -> None:
        while True:
            assert self._selection is not None
            now = trio.current_time()
            deadline = stall_deadline(self._selection, self.policy, self._live())
            # The next instant of the process's CHECK_S grid (meksd.runtime.grid): every
            # room's monitor wakes the process at the same instants, not each on its own.
            wake = next_on_grid(now, CHECK_S)
            if deadline is not None:
                wake = min(deadline, wake)
            await trio.sleep_until(wake)
            now = trio.current_time()
            live = self._live()
            self._check_failures(now, live)
            self._decide(on_tick(self._selection, now, self.policy, live))

    def _check_failures(self, now: float, live: LiveStatus) -> None:
        """Report failures the sources counted since the last check, except those a
        record followed (the source recovered before we looked: not "in a row")."""
        for i, source in enumerate(self.sources):
            stats = source.statistics()
            new, self._seen_failures[i] = stats.failures - self._seen_failures[i], stats.failures
            for _ in range(max(0, min(new, stats.failures_in_a_row))):
                assert self._selection is not None
                self._decide(on_failure(self._selection, i, now, self.policy, live))

    # --- decisions --------------------------------------------------------------

    def _decide(self, outcome: tuple[Selection, list[Action]]) -> None:
        """Adopt the core's new selection and perform its actions. Synchronous."""
        self._selection, actions = outcome
        if not actions:
            return
        restart: set[int] = set()
        for action in actions:
            if isinstance(action, Switch):
                old, new = self.sources[action.old].name, self.sources[action.new].name
                if action.kind == "failover":
                    self.counters.failovers += 1
                    self._log.bind(event="source_failover").warning(
                        "failing over from {old} to {new}: {reason}",
                        old=old,
                        new=new,
                        reason=action.reason,
                    )
                else:
                    self.counters.failbacks += 1
                    self._log.bind(event="source_failback").info(
                        "back to {new} from {old}: {reason}",
                        old=old,
                        new=new,
                        reason=action.reason,
                    )
            elif isinstance(action, Restart):
                self.counters.stalls += 1
                restart.add(action.index)
                self._log.bind(event="source_stalled").warning(
                    "{source} {reason}; reconnecting it",
                    source=self.sources[action.index].name,
                    reason=action.reason,
                )
        self._sync(frozenset(restart))

    def _sync(self, restart: frozenset[int]) -> None:
        """Start and stop source tasks to match the selection; restart ``restart``."""
        assert self._selection is not None
        want = self._selection.running
        for i in list(self._tasks):
            if i not in want or i in restart:
                self._tasks.pop(i).scope.cancel()
        for i in sorted(want - self._tasks.keys()):
            self._start(i)

    def _start(self, index: int) -> None:
        assert self._nursery is not None
        task = _Task()
        previous = self._last.get(index)
        self._tasks[index] = task
        self._last[index] = task
        self._nursery.start_soon(
            self._run_source, index, task, None if previous is None else previous.done
        )

    async def _run_source(self, index: int, task: _Task, previous: trio.Event | None) -> None:
        try:
            with task.scope:
                if previous is not None:
                    await previous.wait()
                await self._supervised(index)
        finally:
            task.done.set()

    async def _supervised(self, index: int) -> None:
        source = self.sources[index]
        crashes = 0
        while True:
            started = trio.current_time()
            try:
                await source.run(self._outlets[index])
            except Exception as exc:
                now = trio.current_time()
                if now - started > 60:
                    crashes = 0
                delay = CRASH_BACKOFF_S[min(crashes, len(CRASH_BACKOFF_S) - 1)]
                crashes += 1
                self._log.opt(exception=exc).error(
                    "source {source} failed; restarting in {delay}s",
                    source=source.name,
                    delay=delay,
                    event="task_restart",
                )
                assert self._selection is not None
                self._decide(on_failure(self._selection, index, now, self.policy, self._live()))
                await trio.sleep(delay)
            else:
                assert self._selection is not None
                self._decide(on_finished(self._selection, index, trio.current_time(), self.policy))
                return

    # --- the outlets' path ------------------------------------------------------

    async def _forward_batch(
        self, index: int, records: Sequence[RawRecord], *, checkpoint: bool
    ) -> None:
        assert self._selection is not None and self._raw is not None
        if not records:
            await trio.lowlevel.checkpoint()
            return
        self._decide(on_record(self._selection, index, trio.current_time(), self.policy))
        counters = self.counters
        if self._selection.active != index:
            counters.standby_dropped += len(records)
            await trio.lowlevel.checkpoint()
            return
        raw = self._raw
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        for record in records:
            try:
                raw.send_nowait(record)
            except trio.WouldBlock:
                waited = True
                counters.ingest_waits += 1
                blocked_at = trio.current_time()
                try:
                    await raw.send(record)
                    # A cancel (failback, stall restart) that came while we waited must
                    # stop the rest of the batch here, not after it reached the room.
                    await trio.lowlevel.checkpoint_if_cancelled()
                finally:
                    counters.ingest_wait_s += trio.current_time() - blocked_at
        if checkpoint and not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        depth = raw.statistics().current_buffer_used
        if depth > counters.ingest_peak:
            counters.ingest_peak = depth
