"""The room actor: sole owner of a room's state.

The loop awaits only at its top: taking the next item from the inbox, or, while
changes wait for the next tick, sleeping until it. Everything after that — draining
what is queued, reducing, expiring streaks, encoding and publishing — is one
synchronous step. A cancellation therefore lands either before
an event is taken (it stays in the channel) or after it is fully applied; there is
no state in between (see ``tests/test_actor.py``, the cancellation at every step).

Publishing is coalesced per tick with a leading and a trailing edge: an idle room
publishes at once; a busy one at most once per ``tick_s``. Within a tick of a
publish, a busy room's push sources do not read (:meth:`RoomActor.read_after`): the
feed's bytes wait in the kernel and are read, normalized and handed over in one
batch at the tick, and the step that takes that batch publishes it. A room at 500
events/s takes about 60 steps a second instead of 500, and its process wakes about
once per tick instead of once per event. Events that arrive while a delta
waits (in a quieter room, whose sources read at once) stay in the inbox (bounded,
so backpressure still reaches the source) and are reduced together right before the
publish; commands and probes wait at most one tick. The changes waiting for the
next tick (``pending``) are swapped together with the state, as one :class:`Owned`
value, so a restarted actor publishes them rather than losing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs
import orjson
import trio
from loguru import logger

from meksd.core.commands import apply_command, recall
from meksd.core.delta import merge
from meksd.core.limits import MessageGate, RateLimit, new_gate, pass_message
from meksd.core.reduce import expire, next_deadline, reduce
from meksd.core.replies import ReplySettled, settle_all, settle_reply
from meksd.core.wire import delta_message
from meksd.model.commands import CommandResult, ResetSession, SendReply
from meksd.model.events import Event
from meksd.model.state import EMPTY_DELTA, Delta, Reply, RoomState
from meksd.runtime.commands import CommandItem, ReplySlot
from meksd.runtime.hub import RoomFeed
from meksd.runtime.stats import RoomCounters

MAX_BATCH = 512
"""Most events reduced in one step; bounds the time one step holds the loop."""
READ_LEAD_S = 0.004
"""How long before a bursting room's tick its sources read the tick's bulk (see
:meth:`RoomActor.read_after`): enough to read, normalize and reduce a burst's tick
of messages before the publish, so that only the last few are left for the tick."""
READ_LEAD_EVENTS = 16
"""A room whose last delta carried at least this many events reads ahead of its tick
(``READ_LEAD_S``): reading and reducing them at the tick would hold the publish up
by a millisecond or more (about 85 us per event). Fewer are read at the tick."""
GRID_SLACK_S = 0.002
"""How late a publish may come after its tick and still keep the room on its grid of
ticks (see :meth:`RoomActor._tick_after`): a busy room's publish comes about this little
after the tick (the wake-up, and the batch its sources read at the tick). A later one
is an idle room's leading edge and starts a new grid, so that two deltas are never
less than a tick minus this apart."""
READ_HOLD_MAX_TICK_S = 0.1
"""Reads are held only while the tick is at most this long: a room configured with a
long tick reads as events come, so a fast feed never waits on the kernel's socket
buffer for long (its events wait in the bounded inbox instead)."""


@attrs.frozen
class Probe:
    """A round trip through the actor (the watchdog's liveness check).

    The actor sets ``done`` when it reaches the probe in its inbox, after every
    event queued before it has been applied.
    """

    done: trio.Event = attrs.field(factory=trio.Event)


NO_UPSTREAM = CommandResult(
    False, "unavailable", "this room has no [rooms.send] upstream for replies"
)

REPLY_RATE_LIMITED = CommandResult(
    False, "rate_limited", "not applied: too many replies from this operator; retry later"
)

InboxItem = Event | Probe | CommandItem | ReplySettled


def _new_epoch() -> str:
    from meksd.runtime.room import new_epoch  # room.py imports this module

    return new_epoch()


@attrs.frozen
class Owned:
    """What the actor owns: the room state and the changes not yet published."""

    state: RoomState
    pending: Delta = EMPTY_DELTA
    pending_since: float = math.inf
    """When the oldest event behind ``pending`` was received."""


class RoomActor:
    """Applies a room's events and publishes deltas to its :class:`RoomFeed`."""

    def __init__(
        self,
        owned: Owned,
        feed: RoomFeed,
        inbox: trio.MemoryReceiveChannel[InboxItem],
        *,
        tick_s: float,
        counters: RoomCounters,
        new_epoch: Callable[[], str] | None = None,
        on_session_end: Callable[[RoomState], None] | None = None,
        outbox: Callable[[Reply, float], bool] | None = None,
        on_reply_settled: Callable[[Reply, ReplySettled], None] | None = None,
        reply_limit: RateLimit | None = None,
        reply_gates: dict[str, MessageGate] | None = None,
    ) -> None:
        self.owned = owned
        self.feed = feed
        self.inbox = inbox
        self.tick_s = tick_s
        self.counters = counters
        self.new_epoch = new_epoch or _new_epoch
        """Names the epoch a ``session.reset`` starts."""
        self.on_session_end = on_session_end
        """Called (synchronously, after the step) with the state a reset ended."""
        self.outbox = outbox
        """Hands an accepted reply to the room's sender (False: its queue is full);
        None: the room has no ``[rooms.send]`` and ``chat.reply`` is refused."""
        self.on_reply_settled = on_reply_settled
        """Called (synchronously, after the step) with each reply settled and its verdict."""
        self.reply_limit = reply_limit
        """``chat.reply`` per operator (``SendReply.operator``); None: unlimited."""
        self._reply_gates: dict[str, MessageGate] = {} if reply_gates is None else reply_gates
        """The operators' buckets for ``reply_limit`` (the room's, so that they outlive a
        restart of the actor); only the actor touches them, synchronously."""
        self._next_publish = -math.inf
        self._taken_since_publish = 0
        self._last_delta_events = 0
        """Events the last delta carried: more than one makes a busy room, whose
        sources read at the tick (see :meth:`read_after`)."""
        self._log = logger.bind(room=owned.state.room_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until the inbox is closed and drained."""
        task_status.started()
        while True:
            batch: list[InboxItem] = []
            if self._holding():
                # Changes wait for the tick: what arrives meanwhile stays queued in the
                # inbox and is applied in one batch right before the publish, one step
                # per tick instead of one per event.
                await trio.sleep_until(self._deadline())
                if self._last_delta_events > 1:
                    # A busy room's sources wake at this same instant to read what the
                    # feed sent during the tick (read_after): one more turn of the
                    # loop lets them hand it over, so that this step publishes it with
                    # the rest instead of holding it for another tick.
                    await trio.lowlevel.checkpoint()
            else:
                deadline = self._deadline()
                try:
                    if deadline == math.inf:  # nothing timed: no cancel scope to enter
                        batch.append(await self.inbox.receive())
                    else:
                        with trio.move_on_at(deadline):
                            batch.append(await self.inbox.receive())
                except trio.EndOfChannel:
                    self.step([], trio.current_time(), final=True)
                    return
            # No checkpoint from here to the end of the iteration.
            self._drain_into(batch)
            self.step(batch, trio.current_time())

    def _holding(self) -> bool:
        """Whether unpublished changes are waiting for the next tick."""
        return not self.owned.pending.empty and trio.current_time() < self._next_publish

    def read_after(self) -> float:
        """When the room's push sources should read their next messages.

        In a busy room (its last delta carried more than one event), the next tick:
        whatever they read within a tick of a publish would only be held for the tick
        (the trailing edge), so they leave it in the kernel and read it at the tick,
        all at once, and the step that takes it publishes it. A room at 500 events/s
        then wakes the process about once per tick, not once per event, and its
        events wait no longer than before. Once the tick is over, the time returned is
        past: they read at once, the leading edge. In a burst (the last delta carried
        ``READ_LEAD_EVENTS`` or more), ``READ_LEAD_S`` before the tick while nothing
        waits: the bulk is read and reduced ahead, the rest at the tick. Asked right
        after a source handed its batch over at the tick, before the step that
        publishes it, the answer is already the tick after that publish.

        ``-inf`` (read at once) in a room whose deltas carry one event each (a
        quieter feed: holding its reads would save nothing and cost a timer each), and
        when the tick is longer than ``READ_HOLD_MAX_TICK_S``.
        """
        if self._last_delta_events <= 1 or self.tick_s > READ_HOLD_MAX_TICK_S:
            return -math.inf
        tick = self._next_publish
        publishing = False
        now = trio.current_time()
        if now >= tick and self.inbox.statistics().current_buffer_used:
            # What a source just handed over waits in the inbox, and the step that
            # takes it publishes it: answer with the tick after that publish, so that
            # the source sleeps until then instead of waking for the feed's next
            # message only to learn it. (Should that step publish nothing, its
            # events all duplicates, the source reads one tick later than it could,
            # the wait any event has in a busy room.)
            tick, publishing = self._tick_after(tick, now), True
        if self._last_delta_events >= READ_LEAD_EVENTS and (publishing or self.owned.pending.empty):
            return tick - min(READ_LEAD_S, self.tick_s / 4)
        return tick

    def _tick_after(self, due: float, now: float) -> float:
        """The next tick after a publish at ``now`` of the tick ``due``.

        A busy room keeps to a grid of ticks: its publish comes a little after the tick
        was due (the wake-up, and the batch its sources read at the tick), and the next
        tick is one tick after this one was due, not after it came. A later publish (an
        idle room's leading edge) starts a new grid.
        """
        on_grid = 0 <= now - due <= min(GRID_SLACK_S, self.tick_s / 4)
        return (due if on_grid else now) + self.tick_s

    def _deadline(self) -> float:
        owned = self.owned
        deadline = math.inf
        if not owned.pending.empty:
            deadline = self._next_publish
        streak_deadline = next_deadline(owned.state)
        if streak_deadline is not None:
            deadline = min(deadline, streak_deadline)
        return deadline

    def _drain_into(self, batch: list[InboxItem]) -> None:
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self.inbox.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    def step(self, batch: Sequence[InboxItem], now: float, *, final: bool = False) -> None:
        """Apply ``batch`` at ``now``, then publish if due. Synchronous: never checkpoints.

        Events and operator commands apply in inbox order. Command replies are
        resolved right after the new state is swapped in; a ``session.reset`` in the
        batch then restarts the feed at the new epoch (dashboards resync from its
        snapshot, which includes everything after the reset) and hands the ended
        session to ``on_session_end``.
        """
        state, pending, since = self.owned.state, self.owned.pending, self.owned.pending_since
        ended: list[RoomState] = []
        answers: list[tuple[ReplySlot, CommandResult]] = []
        settled: list[tuple[Reply, ReplySettled]] = []
        events: list[Event] = []
        for item in batch:
            if isinstance(item, ReplySettled):
                state, pending, since = self._apply_events(state, pending, since, events)
                events = []
                state, delta, done = settle_reply(state, item)
                if done is not None:
                    settled.append((done, item))
                    pending, since = merge(pending, delta), min(since, now)
            elif isinstance(item, CommandItem):
                state, pending, since = self._apply_events(state, pending, since, events)
                events = []
                if not item.reply.open:  # withdrawn: the dashboard stopped waiting
                    continue
                before = state
                state, delta, result = self._command(state, item, now)
                if result.reply_id is not None and not result.duplicate:
                    state, delta = self._hand_over(state, delta, result.reply_id, now, settled)
                answers.append((item.reply, result))
                if state.epoch != before.epoch:
                    ended.append(before)
                    pending, since = EMPTY_DELTA, math.inf
                elif not delta.empty:
                    pending = merge(pending, delta)
                    since = min(since, item.submitted_at)
            elif not isinstance(item, Probe):
                events.append(item)
        state, pending, since = self._apply_events(state, pending, since, events)
        due = next_deadline(state)
        if due is not None and due <= now:
            before = state
            state, delta = expire(state, now)
            self.counters.streaks_timed_out += state.streaks_timed_out - before.streaks_timed_out
            if state is not before:
                pending = merge(pending, delta)
                since = min(since, now)
        if ended:
            self.owned = Owned(state)  # the new epoch's snapshot includes what was pending
        else:
            self.owned = Owned(state, pending, since)
        for slot, result in answers:
            slot.resolve(result)
        self._notify(settled)
        if ended:
            self.feed.reset(state, 0)
            for previous in ended:
                self._session_ended(previous)
        elif not pending.empty and (final or now >= self._next_publish):
            self._publish(now)
        for item in batch:
            if isinstance(item, Probe):
                item.done.set()

    def _apply_events(
        self, state: RoomState, pending: Delta, since: float, events: list[Event]
    ) -> tuple[RoomState, Delta, float]:
        if not events:
            return state, pending, since
        self.counters.events += len(events)
        self._taken_since_publish += len(events)
        state, delta = self._reduce(state, events)
        return state, merge(pending, delta), min(since, min(e.received_at for e in events))

    def _hand_over(
        self,
        state: RoomState,
        delta: Delta,
        reply_id: str,
        now: float,
        settled: list[tuple[Reply, ReplySettled]],
    ) -> tuple[RoomState, Delta]:
        """Queue the reply just accepted for the sender; fail it now if its queue is full."""
        reply = next(r for r in state.replies if r.reply_id == reply_id)
        if self.outbox is not None and self.outbox(reply, now):
            return state, delta
        verdict = ReplySettled(reply_id, False, "queue_full", 0, now)
        state, more, done = settle_reply(state, verdict)
        if done is not None:
            settled.append((done, verdict))
        return state, merge(delta, more)

    def _reply_allowed(self, operator: str, now: float) -> bool:
        """Take one reply from ``operator``'s bucket (a refusal is not remembered)."""
        limit = self.reply_limit
        if limit is None:
            return True
        gates = self._reply_gates
        if len(gates) >= 4096 and operator not in gates:
            gates.clear()  # bounded: a forgotten operator starts with a full bucket
        gate = gates.get(operator) or new_gate(limit, now)
        gates[operator], verdict = pass_message(gate, limit, now)
        return verdict == "ok"

    def settle_pending(self, error: str) -> None:
        """Fail every pending reply with ``error`` and publish it (shutdown). Synchronous."""
        state, delta, done = settle_all(self.owned.state, error)
        if not done:
            return
        now = trio.current_time()
        owned = self.owned
        self.owned = Owned(state, merge(owned.pending, delta), min(owned.pending_since, now))
        self._publish(now)
        self._notify([(r, ReplySettled(r.reply_id, False, error, 0, now)) for r in done])

    def _notify(self, settled: list[tuple[Reply, ReplySettled]]) -> None:
        if self.on_reply_settled is None:
            return
        for reply, verdict in settled:
            try:
                self.on_reply_settled(reply, verdict)
            except Exception as exc:
                self._log.opt(exception=exc).error("reply hook failed", event="reply_hook_error")

    def _command(
        self, state: RoomState, item: CommandItem, now: float
    ) -> tuple[RoomState, Delta, CommandResult]:
        command = item.command
        if isinstance(command, SendReply) and recall(state.commands, command.id) is None:
            if self.outbox is None:
                return state, EMPTY_DELTA, NO_UPSTREAM
            if not self._reply_allowed(command.operator, now):
                return state, EMPTY_DELTA, REPLY_RATE_LIMITED
        try:
            epoch = self.new_epoch() if isinstance(command, ResetSession) else ""
            return apply_command(state, command, epoch=epoch)
        except Exception as exc:
            self._log.opt(exception=exc).error(
                "command {action} failed; not applied, state kept",
                action=command.action,
                event="command_error",
            )
            return state, EMPTY_DELTA, CommandResult(False, "internal", "see the server log")

    def _session_ended(self, previous: RoomState) -> None:
        self._log.info(
            "session reset: epoch {old} ended ({diamonds} diamonds, {gifters} gifters),"
            " epoch {new} started",
            old=previous.epoch,
            new=self.owned.state.epoch,
            diamonds=previous.totals.diamonds,
            gifters=len(previous.leaderboard),
            event="session_reset",
        )
        if self.on_session_end is not None:
            try:
                self.on_session_end(previous)
            except Exception as exc:
                self._log.opt(exception=exc).error(
                    "session-end hook failed", event="session_hook_error"
                )

    def _reduce(self, state: RoomState, events: list[Event]) -> tuple[RoomState, Delta]:
        before = state
        try:
            new_state, delta = reduce(state, events)
        except Exception:
            # Isolate the event(s) the reducer cannot take; apply the rest.
            delta = EMPTY_DELTA
            for event in events:
                try:
                    state, one = reduce(state, [event])
                except Exception as exc:
                    self.counters.rejected["reducer_error"] += 1
                    self._log.opt(exception=exc).error(
                        "reducer failed on {kind}; event rejected, state kept",
                        kind=type(event).__name__,
                    )
                else:
                    delta = merge(delta, one)
            new_state = state
        self.counters.applied += new_state.events - before.events
        self.counters.duplicates += new_state.duplicates - before.duplicates
        return new_state, delta

    def _publish(self, now: float) -> None:
        owned = self.owned
        feed = self.feed
        seq = feed.seq + 1
        body = orjson.dumps(delta_message(feed.room_id, owned.state.epoch, seq, owned.pending))
        feed.publish(seq, body, owned.state, owned.pending_since)
        self.owned = Owned(owned.state)
        self.counters.deltas += 1
        self._next_publish = self._tick_after(self._next_publish, now)
        self._last_delta_events = self._taken_since_publish
        self._taken_since_publish = 0
