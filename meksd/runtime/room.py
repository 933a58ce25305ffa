"""A room's supervisor: sources → (normalize) → actor, each restarted on its own.

::

    sources ──normalize, in the source's task──▶ inbox (ingest_queue) ──▶ actor ──▶ RoomFeed

The sources run under a :class:`~meksd.runtime.failover.SourceSelector`: the active
one feeds the room, preferred ones are retried in the background, a stalled or
failing one fails over to the next (``docs/sources.md``). Its records are normalized
synchronously where they are handed over (:class:`Ingest`), so an event costs the
process one task switch to the actor, not two. The inbox is bounded: when it is full
a source's ``send`` blocks, which is backpressure on the feed rather than growing
memory. A source or actor that fails
is restarted with backoff; the actor restarts from its last good state (the
:class:`~meksd.runtime.actor.Owned` value, which is only ever swapped whole). A
failure in one room never reaches another room or the server.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial

import attrs
import trio
from loguru import logger

from meksd.config import RoomSettings, room_config
from meksd.core.failover import Policy
from meksd.core.limits import MessageGate, RateLimit
from meksd.core.normalize import normalize
from meksd.core.reduce import new_room
from meksd.core.replies import ReplySettled, settle_all
from meksd.model.events import Rejected, Unknown
from meksd.model.raw import RawRecord
from meksd.model.state import Reply, RoomState
from meksd.runtime.actor import InboxItem, Owned, Probe, RoomActor
from meksd.runtime.failover import SourceSelector
from meksd.runtime.hub import RoomFeed
from meksd.runtime.ratelimit import LogLimiter
from meksd.runtime.replies import Queued, ReplySender
from meksd.runtime.sources import NETWORK_KINDS, Pacing, make_source
from meksd.runtime.stats import RoomCounters

MAX_UNKNOWN_TYPES = 256
"""Distinct unknown event types counted by name per room; the rest count as ``_other``."""
RESTART_BACKOFF_S = (0.1, 0.5, 2.0, 5.0)


def new_epoch() -> str:
    """A fresh epoch name: sortable by creation time, unique enough per room."""
    return f"{int(time.time()):x}-{secrets.token_hex(4)}"


class Room:
    """One room's tasks and the handles others read (feed, counters)."""

    def __init__(
        self,
        settings: RoomSettings,
        *,
        tick_s: float,
        ring_size: int,
        owned: Owned | None = None,
        feed: RoomFeed | None = None,
        seq: int = 0,
    ) -> None:
        self.settings = settings
        self.room_id = settings.id
        if owned is None:
            owned = Owned(new_room(settings.id, new_epoch(), room_config(settings)))
        else:  # restored: no sender holds its pending replies any more
            state, _, lost = settle_all(owned.state, "restart")
            if lost:
                owned = attrs.evolve(owned, state=state)
                logger.bind(room=settings.id).warning(
                    "{n} operator replies pending at the last stop settled as failed",
                    n=len(lost),
                    event="replies_lost",
                )
        self.tick_s = tick_s
        self.counters = RoomCounters()
        # ``seq``: where a restored room's feed goes on (meksd.runtime.store).
        self.feed = feed or RoomFeed(owned.state, seq, ring_size=ring_size)
        self._owned = owned
        self._actor: RoomActor | None = None
        self._inbox_send: trio.MemorySendChannel[InboxItem] | None = None
        self.previous: RoomState | None = None
        """The state of the session the last ``session.reset`` ended (in memory only)."""
        self.session_hooks: list[Callable[[RoomState], None]] = []
        """Called with each ended session's state, in the actor's step: must not block."""
        self._replies: trio.MemorySendChannel[Queued] | None = None
        self._reply_gates: dict[str, MessageGate] = {}
        """Per operator: the ``chat.reply`` rate limit's bucket. Kept here, not in the
        actor, so that an actor restart does not refill every operator's bucket."""
        self.reply_hooks: list[Callable[[Reply, ReplySettled], None]] = []
        """Called with each settled reply (the app routes ``reply_result``): must not block."""
        self._log = logger.bind(room=self.room_id)
        self._reject_log = LogLimiter(interval_s=10.0)
        # Sources in failover order; see meksd.runtime.failover and docs/sources.md.
        pacing = Pacing(
            ended=self._stream_ended,
            ended_backoff_s=settings.ended_backoff_s,
            read_after=self._read_after,
        )
        self.sources = [
            make_source(cfg, room_id=self.room_id, index=i, pacing=pacing)
            for i, cfg in enumerate(settings.sources)
        ]
        self.selector = SourceSelector(
            self.room_id,
            self.sources,
            policy=Policy(stall_s=settings.stall_s, failover_after=settings.failover_after),
            watch=[cfg.kind in NETWORK_KINDS for cfg in settings.sources],
            live=lambda: self.state.live,
            counters=self.counters,
        )

    def _read_after(self) -> float:
        actor = self._actor
        return actor.read_after() if actor is not None else -math.inf

    def _stream_ended(self) -> bool:
        return self.state.live == "ended"

    @property
    def owned(self) -> Owned:
        """The actor's state and unpublished changes (state may be ahead of the feed)."""
        return self._actor.owned if self._actor is not None else self._owned

    @property
    def state(self) -> RoomState:
        """The actor's current state (may be ahead of the last published delta)."""
        return self.owned.state

    def ingest_depth(self) -> int:
        """Items (normalized events, commands) waiting in the actor's inbox."""
        if self._inbox_send is None:
            return 0
        return self._inbox_send.statistics().current_buffer_used

    def actor_idle(self) -> bool:
        """Nothing queued for the actor and nothing waiting to be published."""
        if self.ingest_depth():
            return False
        return self._actor is None or self._actor.owned.pending.empty

    @property
    def inbox(self) -> trio.MemorySendChannel[InboxItem] | None:
        """Where events and operator commands for the actor go (None until running)."""
        return self._inbox_send

    def _session_ended(self, previous: RoomState) -> None:
        self.previous = previous
        for hook in self.session_hooks:
            hook(previous)

    def settle_replies(self, error: str) -> None:
        """Fail every pending reply with ``error`` and publish it. Synchronous."""
        if self._actor is not None:
            self._actor.settle_pending(error)

    def _reply_limit(self) -> RateLimit | None:
        send = self.settings.send
        if send is None:
            return None
        return RateLimit(rate=send.replies_per_minute / 60, burst=send.reply_burst)

    def _queue_reply(self, reply: Reply, accepted_at: float) -> bool:
        assert self._replies is not None
        try:
            self._replies.send_nowait((reply, accepted_at))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _reply_settled(self, reply: Reply, verdict: ReplySettled) -> None:
        c = self.counters
        if verdict.ok:
            c.replies_sent += 1
        else:
            c.replies_failed[verdict.error or "failed"] += 1
        c.reply_attempts += verdict.attempts
        c.reply_settle_s += max(0.0, trio.current_time() - verdict.accepted_at)
        self._log.info(
            "reply {reply_id}: {outcome}",
            reply_id=reply.reply_id,
            outcome="sent" if verdict.ok else verdict.error,
            attempts=verdict.attempts,
            conn=reply.origin,
            event="reply_settled",
        )
        for hook in self.reply_hooks:
            hook(reply, verdict)

    async def probe(self) -> None:
        """Round trip through the actor: returns once it has handled all queued before."""
        if self._inbox_send is None:
            raise RuntimeError("room is not running")
        probe = Probe()
        await self._inbox_send.send(probe)
        await probe.done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the room until cancelled."""
        settings = self.settings
        inbox_send, inbox_receive = trio.open_memory_channel[InboxItem](settings.ingest_queue)
        self._inbox_send = inbox_send
        try:
            await self._run(inbox_send, inbox_receive, task_status)
        finally:
            self.settle_replies("shutdown")  # synchronous: runs even while cancelled

    async def _run(
        self,
        inbox_send: trio.MemorySendChannel[InboxItem],
        inbox_receive: trio.MemoryReceiveChannel[InboxItem],
        task_status: trio.TaskStatus[None],
    ) -> None:
        settings = self.settings
        async with trio.open_nursery() as nursery:
            if settings.send is not None:
                send, receive = trio.open_memory_channel[Queued](settings.send.queue)
                self._replies = send
                sender = ReplySender(self.room_id, settings.send, receive, inbox_send.send)
                await nursery.start(sender.run)
            await nursery.start(self._supervise, "actor", self._make_actor_runner(inbox_receive))
            if self.sources:
                ingest = Ingest(self, inbox_send)
                nursery.start_soon(self._supervise, "sources", partial(self.selector.run, ingest))
            self._log.info("room started", event="room_started", sources=len(self.sources))
            task_status.started()

    def _make_actor_runner(
        self, inbox: trio.MemoryReceiveChannel[InboxItem]
    ) -> Callable[[], Awaitable[None]]:
        async def run_actor() -> None:
            owned = self.owned
            self._actor = RoomActor(
                owned,
                self.feed,
                inbox,
                tick_s=self.tick_s,
                counters=self.counters,
                new_epoch=new_epoch,
                on_session_end=self._session_ended,
                outbox=self._queue_reply if self._replies is not None else None,
                reply_limit=self._reply_limit(),
                reply_gates=self._reply_gates,
                on_reply_settled=self._reply_settled,
            )
            await self._actor.run()

        return run_actor

    async def _supervise(
        self,
        what: str,
        runner: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``runner``; when it raises, log, back off and run it again."""
        task_status.started()
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await runner()
                return
            except Exception as exc:
                if trio.current_time() - started > 60:
                    failures = 0
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                if what == "actor":
                    self.counters.actor_restarts += 1
                self._log.opt(exception=exc).error(
                    "{what} failed; restarting in {delay}s",
                    what=what,
                    delay=delay,
                    event="task_restart",
                )
                await trio.sleep(delay)

    def events_of(self, raw: RawRecord) -> list[InboxItem]:
        """Untrusted input ends here: the events of one raw record, never a raise.

        Counts the record, and what it held that is dropped (rejected or unknown).
        """
        counters = self.counters
        counters.records += 1
        counters.last_event_at = raw.received_at
        settings = self.settings
        events: list[InboxItem] = []
        for item in normalize(
            raw, max_bytes=settings.max_record_bytes, max_depth=settings.max_record_depth
        ):
            if isinstance(item, (Rejected, Unknown)):
                self._count_dropped(item, raw)
            else:
                events.append(item)
        return events

    def _count_dropped(self, item: Rejected | Unknown, raw: RawRecord) -> None:
        counters = self.counters
        if isinstance(item, Rejected):
            counters.rejected[item.reason] += 1
            if self._reject_log.allow(item.reason, trio.current_time()):
                self._log.warning(
                    "rejected feed record: {detail}",
                    detail=item.detail,
                    reason=item.reason,
                    event="rejected",
                    event_type=item.event_type,
                    source=raw.source,
                )
            return
        # Type names come from the feed: a hostile one must not grow this.
        known = item.event_type in counters.unknown
        kind = item.event_type if known or len(counters.unknown) < MAX_UNKNOWN_TYPES else "_other"
        counters.unknown[kind] += 1


class Ingest:
    """Where a room's selector hands its records: normalized right here, in the
    source's task, and put in the actor's inbox.

    It has the part of a ``trio.MemorySendChannel[RawRecord]`` the selector uses.
    ``send_nowait`` raises ``trio.WouldBlock`` when the inbox fills up; the events of
    that record it could not put yet are kept, and the ``send`` of the same record
    that follows puts them, waiting for room: a record is normalized (and its
    rejections counted) once however it went in. A cancellation during that ``send``
    drops the rest of the record's events, as it dropped a record waiting in the
    raw channel before; the relay's replay and the room's dedup cover both.
    """

    def __init__(self, room: Room, inbox: trio.MemorySendChannel[InboxItem]) -> None:
        self._room = room
        self._inbox = inbox
        self._left: list[InboxItem] = []
        self._left_of: RawRecord | None = None

    def send_nowait(self, record: RawRecord) -> None:
        events = self._room.events_of(record)
        inbox = self._inbox
        for i, event in enumerate(events):
            try:
                inbox.send_nowait(event)
            except trio.WouldBlock:
                self._left, self._left_of = events[i:], record
                raise

    async def send(self, record: RawRecord) -> None:
        if self._left_of is record:
            events, self._left, self._left_of = self._left, [], None
        else:
            events = self._room.events_of(record)
        if not events:
            await trio.lowlevel.checkpoint()
        for event in events:
            await self._inbox.send(event)

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._inbox.statistics()
