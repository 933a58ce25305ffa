"""Rooms with several sources against local fake feeds (real sockets on 127.0.0.1):
stall and failure failover, failback, re-sent history, stream end and pause,
backpressure accounting."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketRequest, serve_websocket

from meksd.core.failover import Policy
from meksd.model.raw import RawRecord
from meksd.runtime.actor import InboxItem
from meksd.runtime.failover import CHECK_S, SourceSelector
from meksd.runtime.health import room_readiness
from meksd.runtime.metrics import Metrics
from meksd.runtime.sources.base import BatchSink, SourceMeter, SourceStatistics
from meksd.runtime.stats import RoomCounters
from tests.fakefeeds import Upstream, room_from_toml, wait_for

WS_AND_POLL = """
[[rooms]]
id = "alice"
stall_s = {stall_s}
failover_after = 2
ended_backoff_s = 60

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.1
backoff_max_s = 1.0

[[rooms.sources]]
kind = "http-poll"
url = "http://127.0.0.1:{poll_port}/poll"
poll_ms = 200
backoff_initial_s = 0.1
backoff_max_s = 1.0
"""


async def test_silent_websocket_fails_over_to_poll_within_stall_s_and_back_losing_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accepted-then-silent WebSocket -> http-poll within stall_s; back when it speaks
    again; the totals equal exactly what the feed sent (nothing lost, nothing twice)."""
    stall_s = 5.0
    up = Upstream()
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(WS_AND_POLL.format(stall_s=stall_s, port=port, poll_port=port))
            await nursery.start(room.run)
            nursery.start_soon(up.produce, 20.0, 60.0)
            ws = room.sources[0]

            await trio.sleep(10)
            assert room.selector.active == 0 and up.polls == []
            up.silence()
            silent_at = trio.current_time()
            last_ws = ws.statistics().last_record_at
            assert last_ws is not None and last_ws <= silent_at

            await wait_for(lambda: room.selector.active == 1, every=0.01)
            switched_at = trio.current_time()
            assert switched_at - last_ws <= stall_s + 0.02
            assert room.counters.failovers == 1 and room.counters.stalls == 1
            await trio.sleep(10)
            assert up.polls, "the poll source took over"
            assert room_readiness(room, trio.current_time()).reason.startswith(
                "delivering via http-poll:1"
            )

            up.speak()
            await wait_for(lambda: room.selector.active == 0, every=0.01)
            assert room.counters.failbacks == 1
            polls_at_failback = len(up.polls)
            await trio.sleep(5)
            assert len(up.polls) <= polls_at_failback + 1  # the poll source stopped
            assert room.selector.running() == frozenset({0})

            await wait_for(lambda: trio.current_time() > 61)  # the feed is done
            await wait_for(lambda: up.expected.matches(room.state.totals) and room.actor_idle())
            nursery.cancel_scope.cancel()

    totals = room.state.totals
    assert totals.diamonds == up.expected.diamonds > 0
    assert sum(row.diamonds for row in room.state.leaderboard.values()) == totals.diamonds
    assert room.counters.duplicates > 0  # both sources and the replay overlapped
    assert room.counters.failovers == 1 and room.counters.failbacks == 1


async def test_a_feed_that_resends_its_last_50_on_every_reconnect_counts_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connections dropped every 80 messages, each reconnect replaying the last 50 first:
    totals unchanged."""
    up = Upstream(replay=50)
    up.close_after = 80
    config = """
[[rooms]]
id = "bob"
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.05
backoff_max_s = 0.2
"""
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(config.format(port=port))
            await nursery.start(room.run)
            await up.produce(25.0, 40.0)
            await wait_for(lambda: up.expected.matches(room.state.totals) and room.actor_idle())
            await trio.sleep(5)  # and it stays right while reconnects go on
            nursery.cancel_scope.cancel()
    assert up.expected.matches(room.state.totals)
    assert len(up.ws_connects) > 20
    assert room.counters.duplicates >= 20 * 40  # each reconnect re-sent what it had seen


async def test_refused_websocket_fails_over_after_failover_after_attempts_and_fails_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Handshakes refused twice in a row: the poll source takes over; the WebSocket,
    retried in the background, is taken back once it delivers."""
    up = Upstream()
    accepting = False

    async def relay(request: WebSocketRequest) -> None:
        if not accepting:
            await request.reject(503)
            return
        ws = await request.accept()
        await up._handle_ws(request, ws)  # type: ignore[arg-type]

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            poll_port = await up.serve(nursery)
            server = await nursery.start(serve_websocket, relay, "127.0.0.1", 0, None)
            room = room_from_toml(
                WS_AND_POLL.format(stall_s=20, port=server.port, poll_port=poll_port)
            )
            nursery.start_soon(up.produce, 10.0, 30.0)
            await nursery.start(room.run)
            await wait_for(lambda: room.selector.active == 1, every=0.01)
            assert room.counters.failovers == 1 and room.counters.stalls == 0
            assert room.sources[0].statistics().failures >= 2  # seen every CHECK_S
            assert trio.current_time() < 5  # failures, not a stall
            await trio.sleep(5)
            accepting = True
            await wait_for(lambda: room.selector.active == 0)
            await wait_for(lambda: trio.current_time() > 31)
            await wait_for(lambda: up.expected.matches(room.state.totals) and room.actor_idle())
            nursery.cancel_scope.cancel()
    assert (room.counters.failovers, room.counters.failbacks) == (1, 1)


async def test_stream_end_ends_the_room_without_a_reconnect_storm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After streamEnd the relay hangs up on every connect: the room is ended and ready,
    reconnects come ended_backoff_s/2..ended_backoff_s apart, and nothing fails over."""
    up = Upstream(replay=0)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(WS_AND_POLL.format(stall_s=5, port=port, poll_port=port))
            await nursery.start(room.run)
            await wait_for(lambda: bool(up.ws_connects), every=0.01)
            for n in range(20):
                up.mixed(n)
            up.emit("streamEnd", {})
            await wait_for(lambda: room.state.live == "ended")
            up.hang_up = True
            up.close_after = 0  # the connection in place closes too
            up.emit("roomUser", {"viewerCount": 3})  # wakes the open connection to close it
            ended_at = trio.current_time()
            await trio.sleep(600)
            attempts = [t for t in up.ws_connects if t > ended_at]
            readiness = room_readiness(room, trio.current_time())
            nursery.cancel_scope.cancel()
    assert room.state.live == "ended"
    assert 8 <= len(attempts) <= 600 / 30 + 2  # ~1 a minute; 0.1..1 s backoff would be ~1000
    assert room.counters.failovers == 0
    assert up.polls == []  # the fallback was never started
    assert (readiness.ready, readiness.reason) == (True, "stream ended")


async def test_a_paused_stream_is_silent_without_failing_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """controlMessage action 1 pauses the room: long silence is no stall; action 2 resumes."""
    up = Upstream()
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(WS_AND_POLL.format(stall_s=5, port=port, poll_port=port))
            await nursery.start(room.run)
            up.chat(1)
            up.emit("controlMessage", {"action": 1})
            await wait_for(lambda: room.state.live == "paused")
            up.chat(2)  # viewers chat on while the LIVE is paused
            await trio.sleep(60)
            assert room.state.live == "paused"
            assert room.counters.failovers == 0 and room.counters.stalls == 0
            readiness = room_readiness(room, trio.current_time())
            assert (readiness.ready, readiness.reason) == (True, "stream paused")
            up.emit("controlMessage", {"action": "CONTROL_ACTION_STREAM_UNPAUSED"})
            await wait_for(lambda: room.state.live == "live")
            # Live again: silence is a stall once more.
            await wait_for(lambda: room.counters.stalls == 1)
            nursery.cancel_scope.cancel()
    assert room.state.totals.comments == 2


def live_selector(
    sources: list[Any], *, watch: list[bool], stall_s: float, counters: RoomCounters
) -> SourceSelector:
    """The selector of a room ``r`` that is always live and fails over after 2 failures."""
    return SourceSelector(
        "r",
        sources,
        policy=Policy(stall_s=stall_s, failover_after=2),
        watch=watch,
        live=lambda: "live",
        counters=counters,
    )


class _Burst:
    """A source that pushes ``count`` records as fast as the room takes them."""

    def __init__(self, count: int) -> None:
        self._meter = SourceMeter("burst:0")
        self.count = count

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        return self._meter.snapshot()

    async def run(self, send: object, *, task_status: object = None) -> None:
        self._meter.state = "connected"
        for i in range(self.count):
            await self._meter.push(send, f"r{i}".encode())  # type: ignore[arg-type]
        await trio.sleep_forever()


async def test_a_full_ingest_channel_blocks_the_source_and_the_wait_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With nobody reading, the source stops at capacity; the time blocked and the peak
    depth are counted; reading lets it finish, in order."""
    counters = RoomCounters()
    source = _Burst(5)
    selector = live_selector([source], watch=[False], stall_s=20, counters=counters)
    send, receive = trio.open_memory_channel[RawRecord](2)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await trio.sleep(3)
            assert source.statistics().records == 2  # stopped reading at capacity
            assert counters.ingest_waits == 1 and counters.ingest_peak == 2
            got = [await receive.receive() for _ in range(5)]
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert [r.payload for r in got] == [f"r{i}".encode() for i in range(5)]
    assert counters.ingest_wait_s == pytest.approx(3.0, abs=0.01)
    assert counters.ingest_waits >= 1  # later ones may or may not wait: scheduling


class _Scripted:
    """A source the test drives: ``fail()`` counts a failure, ``record()`` reads one."""

    def __init__(self, name: str) -> None:
        self._meter = SourceMeter(name)
        self._send: object = None
        self.ready = trio.Event()

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        return self._meter.snapshot()

    async def run(self, send: object, *, task_status: object = None) -> None:
        self._send = send
        self.ready.set()
        await trio.sleep_forever()

    def fail(self) -> None:
        self._meter.fail("scripted")

    async def record(self) -> None:
        await self._meter.push(self._send, b"{}")  # type: ignore[arg-type]

    async def batch(self, payloads: list[bytes]) -> None:
        """Records read together (one ``push_all``, as the websocket source does)."""
        await self._meter.push_all(self._send, payloads)  # type: ignore[arg-type]


async def test_failures_are_counted_in_a_row_and_not_against_a_source_taken_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A record between failures breaks the row even when both fall between two checks;
    a probe's failures before its failback do not fail it over again."""
    a, b = _Scripted("a:0"), _Scripted("b:1")
    counters = RoomCounters()
    selector = live_selector([a, b], watch=[True, True], stall_s=1000, counters=counters)
    send, _receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await a.ready.wait()
            a.fail()
            await a.record()  # recovered before the monitor looked
            a.fail()
            await trio.sleep(1)
            assert selector.active == 0 and counters.failovers == 0
            a.fail()
            await trio.sleep(1)
            assert selector.active == 1 and counters.failovers == 1  # two in a row
            await b.ready.wait()
            for _ in range(3):
                a.fail()  # the probe keeps failing...
            await a.record()  # ...then delivers: taken back at once
            assert selector.active == 0 and counters.failbacks == 1
            await trio.sleep(1)
            assert selector.active == 0 and counters.failovers == 1
            nursery.cancel_scope.cancel()


class _Watched(_Scripted):
    """A scripted source that notes when the room's monitor looks at it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.looked_at: list[float] = []

    def statistics(self) -> SourceStatistics:
        self.looked_at.append(trio.current_time())
        return super().statistics()


async def test_every_rooms_monitor_looks_at_the_same_instants_of_the_check_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two rooms' monitors, started 0.1 s apart, look at their sources at the same
    instants, the multiples of CHECK_S (one wake-up of the process for all rooms;
    meksd.runtime.grid), and still at least every CHECK_S."""
    sources = [_Watched("a:0"), _Watched("b:0")]
    send, _receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await trio.sleep(0.03)
            for source in sources:
                selector = live_selector(
                    [source], watch=[False], stall_s=1000, counters=RoomCounters()
                )
                await nursery.start(selector.run, send)
                await trio.sleep(0.1)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
    looks = [sorted({t for t in source.looked_at if 0.5 <= t <= 2.0}) for source in sources]
    assert looks[0] == looks[1]
    assert looks[0] == pytest.approx([0.5 + i * CHECK_S for i in range(7)])


async def test_failover_metrics_are_exposed(autojump_clock: trio.testing.MockClock) -> None:
    """meksd_source_failovers_total and friends show the room's counters; the active
    source is marked."""
    up = Upstream()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(WS_AND_POLL.format(stall_s=3, port=port, poll_port=port))
            await nursery.start(room.run)
            up.chat(1)
            up.silence()
            await wait_for(lambda: room.selector.active == 1)
            room.counters.ingest_wait_s = 1.5
            app = SimpleNamespace(
                rooms={"alice": room},
                dashboards=SimpleNamespace(dashboards=[], accepted=0, rejected=0),
            )
            exposition = Metrics(app, process_collectors=False).exposition()  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
    found = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition.decode())
        for s in family.samples
    }
    room_label = frozenset({("room", "alice")})
    assert found[("meksd_source_failovers_total", room_label)] == 1
    assert found[("meksd_source_stalls_total", room_label)] == 1
    assert found[("meksd_source_failbacks_total", room_label)] == 0
    assert found[("meksd_ingest_backpressure_seconds_total", room_label)] == 1.5
    assert found[("meksd_source_active", room_label | {("source", "http-poll:1")})] == 1
    assert found[("meksd_source_active", room_label | {("source", "websocket:0")})] == 0
    assert math.isfinite(found[("meksd_ingest_backpressure_waits_total", room_label)])


def _queued(receive: trio.MemoryReceiveChannel[RawRecord]) -> list[bytes | str]:
    """The payloads waiting in ``receive`` now, taken."""
    out: list[bytes | str] = []
    while True:
        try:
            out.append(receive.receive_nowait().payload)
        except trio.WouldBlock:
            return out


async def test_a_batch_goes_on_in_order_from_the_active_source_and_is_dropped_from_a_held_down_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """send_batch: the active source's records reach the room's channel in order; a
    batch is what takes a preferred source back (failback); once that source flapped
    and is held down, its batch is dropped and every record of it counted."""
    a, b = _Scripted("a:0"), _Scripted("b:1")
    counters = RoomCounters()
    selector = live_selector([a, b], watch=[True, True], stall_s=1000, counters=counters)
    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await a.ready.wait()
            assert isinstance(a._send, BatchSink)
            await a.batch([b"a0", b"a1", b"a2"])
            assert _queued(receive) == [b"a0", b"a1", b"a2"]

            a.fail()
            a.fail()
            await trio.sleep(1)
            assert selector.active == 1 and counters.failovers == 1
            await b.ready.wait()
            await a.batch([b"a3", b"a4"])  # delivering again: taken back, forwarded
            assert selector.active == 0 and counters.failbacks == 1
            assert _queued(receive) == [b"a3", b"a4"]

            a.fail()
            a.fail()
            await trio.sleep(1)
            assert selector.active == 1 and counters.failovers == 2
            selection = selector.selection
            assert selection is not None and selection.held_until[0] > trio.current_time()
            await a.batch([b"x0", b"x1", b"x2", b"x3"])  # held down: not taken back
            assert selector.active == 1
            assert counters.standby_dropped == 4
            assert _queued(receive) == []
            await b.batch([b"b0", b"b1"])
            assert _queued(receive) == [b"b0", b"b1"]
            nursery.cancel_scope.cancel()
    assert counters.standby_dropped == 4
    assert counters.ingest_waits == 0


async def test_a_batch_the_channel_has_room_for_is_queued_whole_before_the_room_wakes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A batch that fits goes in without a checkpoint between records: the normalizer,
    waiting on the channel, wakes once and finds the rest of the batch already queued."""
    source = _Scripted("a:0")
    counters = RoomCounters()
    selector = live_selector([source], watch=[False], stall_s=20, counters=counters)
    send, receive = trio.open_memory_channel[RawRecord](100)
    woke_with: list[tuple[bytes | str, int]] = []

    async def reader() -> None:
        first = await receive.receive()
        woke_with.append((first.payload, receive.statistics().current_buffer_used))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await source.ready.wait()
            nursery.start_soon(reader)
            await trio.sleep(0.01)  # the reader waits on the empty channel
            await source.batch([f"r{i}".encode() for i in range(6)])
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert woke_with == [(b"r0", 5)]
    assert _queued(receive) == [f"r{i}".encode() for i in range(1, 6)]
    assert counters.ingest_waits == 0 and counters.ingest_peak == 5
    assert source.statistics().records == 6


async def test_a_batch_into_a_full_ingest_channel_blocks_counts_the_wait_and_delivers_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """send_batch into a channel of 2 with nobody reading: it blocks after 2 (the
    source's push_all does not return), the wait is counted; reading lets all 5
    through, in order."""
    source = _Scripted("a:0")
    counters = RoomCounters()
    selector = live_selector([source], watch=[False], stall_s=20, counters=counters)
    send, receive = trio.open_memory_channel[RawRecord](2)
    pushed = trio.Event()

    async def push() -> None:
        await source.batch([f"r{i}".encode() for i in range(5)])
        pushed.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await source.ready.wait()
            nursery.start_soon(push)
            await trio.sleep(3)
            assert not pushed.is_set(), "blocked on the full channel"
            assert receive.statistics().current_buffer_used == 2
            assert counters.ingest_waits == 1
            got = [await receive.receive() for _ in range(5)]
            await pushed.wait()
            nursery.cancel_scope.cancel()
    assert [r.payload for r in got] == [f"r{i}".encode() for i in range(5)]
    assert counters.ingest_wait_s == pytest.approx(3.0, abs=0.01)
    assert counters.ingest_waits >= 1  # later records may wait too: scheduling
    assert source.statistics().records == 5


ONE_WS_SMALL_QUEUE = """
[[rooms]]
id = "carol"
ingest_queue = 4
chat_history = 1000

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
"""


async def test_a_burst_through_a_small_ingest_queue_reaches_the_actor_whole_and_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """300 chat messages at once into a room whose raw channel and inbox hold 4: the
    normalizer fills the inbox and waits on it, and still every message reaches the
    actor once, in the feed's order."""
    up = Upstream(replay=0)
    inbox_was_full = False

    async def watch_inbox(room_inbox: trio.MemorySendChannel[InboxItem]) -> None:
        nonlocal inbox_was_full
        while True:
            stats = room_inbox.statistics()
            if stats.current_buffer_used == stats.max_buffer_size and stats.tasks_waiting_send:
                inbox_was_full = True
                return
            await trio.sleep(0.0005)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await up.serve(nursery)
            room = room_from_toml(ONE_WS_SMALL_QUEUE.format(port=port))
            await nursery.start(room.run)
            await wait_for(lambda: room.sources[0].statistics().state == "connected", every=0.01)
            assert room.inbox is not None
            nursery.start_soon(watch_inbox, room.inbox)
            for n in range(300):
                up.chat(n)
            await wait_for(lambda: room.state.totals.comments >= 300 and room.actor_idle())
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert inbox_was_full, "the inbox never filled: the test did not exercise the wait"
    assert [c.msg_id for c in room.state.chat] == [f"m{i}" for i in range(1, 301)]
    assert [c.comment for c in room.state.chat] == [f"hello {n}" for n in range(300)]
    assert room.state.totals.comments == 300
    assert room.counters.records == 300
    assert room.counters.events == 300
    assert room.counters.duplicates == 0
    assert room.counters.ingest_waits > 0  # the raw channel was full too


async def test_send_is_a_checkpoint_and_a_taken_batch_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Record by record (``send``: a replay at full speed) every hand-over lets the
    other tasks run, so such a source never holds the loop until the room's channel
    fills; a batch the channel takes at once (``send_batch``: the websocket source,
    whose read was the checkpoint) does not yield a second time."""
    a = _Scripted("a:0")
    selector = live_selector([a], watch=[True], stall_s=1000, counters=RoomCounters())
    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(selector.run, send)
            await a.ready.wait()
            nursery.start_soon(other_task)  # always runnable: the clock stands still now
            await trio.lowlevel.checkpoint()
            before = turns
            for _ in range(20):
                await a.record()
            assert turns - before >= 19, "the other task ran between the records"
            before = turns
            for _ in range(20):
                await a.batch([b"{}", b"{}"])
            assert turns == before, "no yield for batches the channel took"
            nursery.cancel_scope.cancel()
    assert len(_queued(receive)) == 60
