"""The room actor: cancel safety at every step, tick coalescing, streak expiry."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson
import pytest
import trio
import trio.testing

from meksd.core.reduce import new_room, reduce
from meksd.core.wire import apply_delta, delta_message, snapshot_message
from meksd.model.events import ChatMessage, Event, GiftSent, User
from meksd.model.state import RoomConfig, RoomState
from meksd.runtime.actor import (
    GRID_SLACK_S,
    READ_HOLD_MAX_TICK_S,
    READ_LEAD_EVENTS,
    READ_LEAD_S,
    InboxItem,
    Owned,
    Probe,
    RoomActor,
)
from meksd.runtime.hub import RoomFeed
from meksd.runtime.stats import RoomCounters


def make_events(n: int) -> list[Event]:
    """Gifts (single and complete streaks) and chat, all with distinct msgIds."""
    events: list[Event] = []
    i = 0
    while len(events) < n:
        i += 1
        user = User(str(i % 7), f"u{i % 7}", f"User {i % 7}")
        if i % 3 == 0:
            for k in (1, 2, 3):
                events.append(
                    GiftSent(f"s{i}-{k}", user, "5655", "Rose", 1, k, k == 3, f"g{i}", 1, 0.0, 0)
                )
        elif i % 3 == 1:
            events.append(GiftSent(f"m{i}", user, "5487", "Heart", 0, 2, False, "", 5, 0.0, 0))
        else:
            events.append(ChatMessage(f"c{i}", user, f"hi {i}", 0.0, 0))
    return events[:n]


def start_state(config: RoomConfig | None = None) -> RoomState:
    return new_room("r", "e1", config or RoomConfig(streak_timeout_s=1e6))


class ActorRig(NamedTuple):
    initial: RoomState
    feed: RoomFeed
    send: trio.MemorySendChannel[InboxItem]
    actor: RoomActor
    counters: RoomCounters


def actor_rig(tick_s: float, config: RoomConfig | None = None) -> ActorRig:
    """An actor (not started) over a fresh state, its feed and the send end of its inbox."""
    initial = start_state(config)
    feed = RoomFeed(initial, 0, ring_size=100)
    send, receive = trio.open_memory_channel[InboxItem](100)
    counters = RoomCounters()
    actor = RoomActor(Owned(initial), feed, receive, tick_s=tick_s, counters=counters)
    return ActorRig(initial, feed, send, actor, counters)


class CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` just before ``task``'s k-th step."""

    def __init__(self, k: int, scope: trio.CancelScope) -> None:
        self.k = k
        self.scope = scope
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps == self.k:
                self.scope.cancel()


def replay_published(feed_bodies: list[bytes], initial: RoomState) -> dict[str, Any]:
    view = snapshot_message(initial, 0)["state"]
    for body in feed_bodies:
        decoded = orjson.loads(body)
        for msg in decoded if isinstance(decoded, list) else [decoded]:
            view = apply_delta(view, msg)
    return view


async def run_cancelled_at(k: int, events: list[Event]) -> tuple[int, bool]:
    """Run the actor while feeding ``events``; cancel it at its k-th step; check invariants."""
    initial = start_state()
    feed = RoomFeed(initial, 0, ring_size=10_000)
    send, receive = trio.open_memory_channel[InboxItem](len(events))
    actor = RoomActor(Owned(initial), feed, receive, tick_s=0.016, counters=RoomCounters())
    scope = trio.CancelScope()
    feeder_sent = 0
    instrument = CancelAtStep(k, scope)
    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:

            async def feeder() -> None:
                nonlocal feeder_sent
                for j, event in enumerate(events):
                    await send.send(event)
                    feeder_sent += 1
                    if j % 4 == 3:
                        await trio.sleep(0.005 * (j % 7))

            async def run_actor() -> None:
                instrument.task = trio.lowlevel.current_task()
                with scope:
                    await actor.run()

            nursery.start_soon(run_actor)
            nursery.start_soon(feeder)
            with trio.move_on_after(5):
                while not scope.cancel_called:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(instrument)

    remaining = 0
    while True:
        try:
            receive.receive_nowait()
        except trio.WouldBlock:
            break
        remaining += 1
    # Every event the feeder sent was either taken and applied, or is still queued.
    taken = actor.owned.state.events
    assert taken + remaining == feeder_sent
    expected, _ = reduce(initial, events[:taken])
    assert actor.owned.state == expected, f"k={k}: state is not a whole prefix of the events"

    bodies = [feed._ring[s % 10_000] for s in range(1, feed.seq + 1)]
    published_view = replay_published(bodies, initial)
    assert published_view == snapshot_message(feed.state, feed.seq)["state"]
    pending = delta_message("r", "e1", feed.seq + 1, actor.owned.pending)
    assert apply_delta(published_view, pending) == snapshot_message(expected, 0)["state"]
    return instrument.steps, scope.cancel_called


async def test_cancel_at_every_step_leaves_state_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the actor at its k-th step, for every k, leaves state untouched or fully updated."""
    events = make_events(60)
    k = 1
    while True:
        _, cancelled = await run_cancelled_at(k, events)
        if not cancelled or k > 400:
            break
        k += 1
    assert k > 5, "the actor should have taken several steps"


async def test_tick_coalescing_leading_and_trailing_edge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An idle room publishes at once; a busy one at most once per tick, the rest on the trailing edge."""
    _initial, feed, send, actor, _ = actor_rig(0.1)
    events = make_events(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await send.send(events[0])
        await trio.sleep(0.001)
        assert feed.seq == 1, "leading edge: published at once"
        for e in events[1:5]:
            await send.send(e)
            await trio.sleep(0.01)
        assert feed.seq == 1, "inside the tick: held back"
        await trio.sleep(0.1)
        assert feed.seq == 2, "trailing edge: one delta for the held events"
        probe = Probe()
        await send.send(probe)
        await probe.done.wait()
        nursery.cancel_scope.cancel()
    assert actor.counters.deltas == 2


async def test_a_busy_room_takes_one_step_per_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a delta waits for its tick, events stay queued and are reduced together
    right before the publish: 40 events 1 ms apart in a 16 ms tick take two steps per
    tick, not 40, and the published state is every one of them."""
    initial, feed, send, actor, _ = actor_rig(0.016)
    steps: list[int] = []
    step = actor.step

    def counted(batch: Any, now: float, *, final: bool = False) -> None:
        steps.append(len(batch))
        step(batch, now, final=final)

    actor.step = counted  # type: ignore[method-assign]
    events = make_events(40)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        for event in events:
            await send.send(event)
            await trio.sleep(0.001)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert sum(steps) == 40
    # Per tick: one step takes the first event after a publish, one applies the rest.
    assert len(steps) <= 2 * (40 * 0.001 / 0.016 + 1) + 1, steps
    assert max(steps) > 10, "held events are applied in one batch"
    assert feed.state == reduce(initial, events)[0]
    assert actor.counters.deltas <= 40 * 0.001 / 0.016 + 2, "one delta per tick at most"


async def test_read_after_is_the_next_tick_once_a_delta_carried_several_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """-inf before any event and while each delta carries one event (a quiet room
    reads at once); once a delta carried several (a busy room), the room's next tick,
    which is in the past once the tick is over."""
    tick_s = 0.016
    initial, feed, send, actor, _ = actor_rig(tick_s)
    events = make_events(4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await trio.sleep(0.0001)
        assert actor.read_after() == -math.inf
        first_at = trio.current_time()
        await send.send(events[0])
        await trio.sleep(0.0001)
        assert feed.seq == 1, "leading edge: published at once"
        assert actor.read_after() == -math.inf, "one event: the room reads at once"
        await send.send(events[1])
        await send.send(events[2])
        await trio.sleep(0.0001)
        assert feed.seq == 1, "held for the tick"
        assert actor.read_after() == -math.inf
        await trio.sleep_until(first_at + tick_s + 0.0001)
        assert feed.seq == 2, "trailing edge: one delta for both"
        assert actor.read_after() == pytest.approx(first_at + 2 * tick_s), "busy: the next tick"
        await trio.sleep(tick_s)
        assert actor.read_after() < trio.current_time(), "the tick is over: read at once"
        await send.send(events[3])
        await trio.sleep(0.0001)
        assert feed.seq == 3, "leading edge again"
        assert actor.read_after() == -math.inf, "one event: quiet again"
        nursery.cancel_scope.cancel()
    assert feed.state == reduce(initial, events)[0]


async def make_busy(
    send: trio.MemorySendChannel[InboxItem], three: list[Event], tick_s: float
) -> float:
    """A leading-edge event, then two held for the tick: once the tick has passed, the
    room's last delta carried two events (busy). Returns when the first was sent."""
    start = trio.current_time()
    await send.send(three[0])
    await trio.sleep(0.0001)
    await send.send(three[1])
    await send.send(three[2])
    await trio.sleep_until(start + tick_s + 0.0001)
    return start


async def test_a_busy_room_publishes_the_batch_its_source_reads_at_the_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In a busy room a source holds its reads until read_after and hands the batch
    over at the tick; the step that takes it publishes it at once, and the next tick is
    on the grid (one tick after the one that was due, though the batch came late)."""
    tick_s = 0.016
    initial, feed, send, actor, _ = actor_rig(tick_s)
    events = make_events(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        start = await make_busy(send, events[:3], tick_s)
        assert feed.seq == 2
        due = actor.read_after()
        assert due == pytest.approx(start + 2 * tick_s)
        # A source woken at the tick, 1.5 ms late (a slow wake-up, a long batch).
        await trio.sleep_until(due + 0.0015)
        for event in events[3:6]:
            send.send_nowait(event)
        # Asked right after the hand-over, before the actor's step: the tick after the
        # publish that step makes (the source sleeps until it, not until a message).
        assert feed.seq == 2
        assert actor.read_after() == pytest.approx(due + tick_s), "the next tick, foreseen"
        await trio.sleep(0.0001)
        assert feed.seq == 3, "published by the step that took the batch"
        assert actor.read_after() == pytest.approx(due + tick_s), "the grid, not now + tick"
        # A batch more than GRID_SLACK_S after its tick is a leading edge: a new grid,
        # so that the next delta is a whole tick later.
        late_at = due + tick_s + GRID_SLACK_S + 0.001
        await trio.sleep_until(late_at)
        send.send_nowait(events[6])
        send.send_nowait(events[7])
        assert actor.read_after() == pytest.approx(late_at + tick_s), "foreseen: a new grid"
        await trio.sleep(0.0001)
        assert feed.seq == 4
        assert actor.read_after() == pytest.approx(late_at + tick_s)
        nursery.cancel_scope.cancel()
    assert feed.state == reduce(initial, events)[0]


async def test_a_batch_read_at_the_tick_joins_the_delta_that_waits_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A busy room's actor holding a delta (a command, or an event from a source that
    does not hold its reads) wakes at the same instant as the sources reading at the
    tick: what they read then is published with it, not a tick later."""
    tick_s = 0.016
    initial, feed, send, actor, _ = actor_rig(tick_s)
    events = make_events(6)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        start = await make_busy(send, events[:3], tick_s)
        assert feed.seq == 2
        await send.send(events[3])  # held by the actor until the tick
        await trio.sleep(0.0001)
        assert not actor.owned.pending.empty

        async def source() -> None:
            await trio.sleep_until(actor.read_after())
            for event in events[4:]:
                send.send_nowait(event)

        nursery.start_soon(source)
        await trio.sleep_until(start + 2 * tick_s + 0.0001)
        assert feed.seq == 3, "one delta at the tick"
        assert feed.state == reduce(initial, events)[0], "with the batch read at the tick"
        nursery.cancel_scope.cancel()


async def test_a_bursting_room_reads_the_bulk_ahead_of_its_tick_and_the_rest_at_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a delta of READ_LEAD_EVENTS or more, the sources read READ_LEAD_S before
    the tick (the bulk is reduced before the publish, which is not held up by it), and
    what comes after that at the tick, published with the bulk in one delta."""
    tick_s = 0.016
    initial, feed, send, actor, _ = actor_rig(tick_s)
    events = make_events(3 * READ_LEAD_EVENTS + 1)
    burst = READ_LEAD_EVENTS
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        start = trio.current_time()
        await send.send(events[0])
        await trio.sleep(0.0001)
        for event in events[1 : 1 + burst]:
            send.send_nowait(event)
        await trio.sleep_until(start + tick_s + 0.0001)
        assert feed.seq == 2, "the burst in one delta at the tick"
        tick = start + 2 * tick_s
        assert actor.read_after() == pytest.approx(tick - READ_LEAD_S), "the bulk: ahead"
        await trio.sleep_until(tick - READ_LEAD_S)
        for event in events[1 + burst : 1 + 2 * burst]:
            send.send_nowait(event)
        await trio.sleep(0.0001)
        assert feed.seq == 2, "reduced, held for the tick"
        assert not actor.owned.pending.empty
        assert actor.read_after() == pytest.approx(tick), "the rest: at the tick"

        async def source() -> None:
            await trio.sleep_until(actor.read_after())
            for event in events[1 + 2 * burst :]:
                send.send_nowait(event)
            foreseen.append(actor.read_after())

        foreseen: list[float] = []
        nursery.start_soon(source)
        await trio.sleep_until(tick + 0.0001)
        assert feed.seq == 3, "bulk and rest in one delta at the tick"
        after = tick + tick_s - READ_LEAD_S
        assert foreseen == [pytest.approx(after)], "asked at the hand-over: the next bulk's read"
        assert actor.read_after() == pytest.approx(after)
        nursery.cancel_scope.cancel()
    assert feed.state == reduce(initial, events)[0]


async def test_a_room_with_a_long_tick_does_not_hold_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a tick over READ_HOLD_MAX_TICK_S the delta still waits for its tick, but the
    sources are told to read at once: the feed's bytes do not sit in the kernel for
    most of a long tick."""
    tick_s = READ_HOLD_MAX_TICK_S * 2
    _initial, feed, send, actor, _ = actor_rig(tick_s)
    events = make_events(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await send.send(events[0])
        await trio.sleep(0.0001)
        assert feed.seq == 1, "leading edge"
        await send.send(events[1])
        await trio.sleep(0.0001)
        assert feed.seq == 1, "the second event waits for the tick"
        assert not actor.owned.pending.empty
        assert actor.read_after() == -math.inf
        await send.send(events[2])
        await trio.sleep(tick_s)
        assert feed.seq == 2
        assert actor.read_after() == -math.inf, "busy, but the tick is too long to hold reads"
        nursery.cancel_scope.cancel()


async def test_open_streak_expires_and_is_published(autojump_clock: trio.testing.MockClock) -> None:
    """A streak with no end is counted after streak_timeout_s by the actor's timer, once."""
    _initial, feed, send, actor, counters = actor_rig(0.016, RoomConfig(streak_timeout_s=15))
    user = User("1", "a", "A")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        now = trio.current_time()
        for k in (1, 2, 3):
            await send.send(GiftSent(f"g{k}", user, "7", "Rose", 1, k, False, "grp", 10, now, 0))
        await trio.sleep(1)
        assert actor.owned.state.totals.diamonds == 0
        await trio.sleep(15)
        assert actor.owned.state.totals.diamonds == 30
        assert counters.streaks_timed_out == 1
        assert feed.state.totals.diamonds == 30, "the timeout was published"
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert actor.owned.state.totals.diamonds == 30


async def test_reducer_failure_rejects_event_and_keeps_state(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """An event the reducer raises on is counted as rejected; the others in its batch apply."""
    import meksd.runtime.actor as actor_mod

    def flaky(state: RoomState, events: Any) -> Any:
        if any(getattr(e, "msg_id", "") == "bad" for e in events):
            raise ValueError("boom")
        return reduce(state, events)

    monkeypatch.setattr(actor_mod, "reduce", flaky)
    _initial, feed, send, actor, counters = actor_rig(0.016)
    user = User("1", "a", "A")
    batch = [
        GiftSent("ok1", user, "7", "Rose", 0, 1, False, "", 10, 0.0, 0),
        GiftSent("bad", user, "7", "Rose", 0, 1, False, "", 10, 0.0, 0),
        GiftSent("ok2", user, "7", "Rose", 0, 1, False, "", 10, 0.0, 0),
    ]
    for e in batch:
        send.send_nowait(e)
    send.close()
    await actor.run()
    assert counters.rejected["reducer_error"] == 1
    assert actor.owned.state.totals.diamonds == 20
    assert feed.state.totals.diamonds == 20
    assert math.isfinite(trio.current_time())
