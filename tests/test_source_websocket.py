"""The websocket source against real trio-websocket servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket

from meksd.config import WebsocketSourceConfig
from meksd.model.raw import RawRecord
from meksd.runtime.sources import WebsocketSource, make_source
from meksd.runtime.sources.base import BatchSink, Pacing, SourceMeter, full_jitter_delay

Handler = Callable[[WebSocketRequest], Awaitable[None]]


class UpperBound:
    """A 'random' source that always draws the top of the range: delays are the bounds."""

    def uniform(self, a: float, b: float, /) -> float:
        return b


def ws_config(port: int, **kwargs: object) -> WebsocketSourceConfig:
    return WebsocketSourceConfig(
        kind="websocket",
        url=f"ws://127.0.0.1:{port}/feed",
        **kwargs,  # type: ignore[arg-type]
    )


async def start_server(nursery: trio.Nursery, handler: Handler) -> int:
    server: WebSocketServer = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return server.port


def test_full_jitter_bounds() -> None:
    """Delays are drawn in [0, min(max, initial * 2**attempt)]."""
    rng = UpperBound()
    assert [full_jitter_delay(n, 0.5, 5.0, rng) for n in range(6)] == [0.5, 1, 2, 4, 5, 5]
    assert full_jitter_delay(10_000, 0.5, 5.0, rng) == 5.0
    real = random.Random(1)
    assert all(0 <= full_jitter_delay(3, 1.0, 30.0, real) <= 8.0 for _ in range(100))


async def test_reconnects_with_growing_backoff_and_delivers_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failed attempts back off exponentially; data resets it; every record arrives in order."""
    attempts: list[float] = []
    enough = trio.Event()
    script: list[str | int] = ["reject", "close", "reject", 5, 5, *["reject"] * 4]

    async def handler(request: WebSocketRequest) -> None:
        attempts.append(trio.current_time())
        if len(attempts) == 9:
            enough.set()
        step = script[len(attempts) - 1] if len(attempts) <= len(script) else "reject"
        if step == "reject":
            await request.reject(503)
            return
        ws = await request.accept()
        if step == "close":
            await ws.aclose()
            return
        base = sum(s for s in script[: len(attempts) - 1] if isinstance(s, int))
        for i in range(base, base + int(step)):
            await ws.send_message(f'{{"event":"chat","data":{{"msgId":"{i}"}}}}')
        await ws.aclose()

    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            cfg = ws_config(port, backoff_initial_s=1.0, backoff_max_s=8.0)
            source = WebsocketSource(cfg, name="websocket:0", room_id="r", rng=UpperBound())
            nursery.start_soon(source.run, send)
            await enough.wait()
            stats = source.statistics()
            nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    # fail, fail, fail (1, 2, 4), data (reset: 1), data (1), then 2, 4, 8, 8 (capped)
    assert gaps[:8] == [1, 2, 4, 1, 1, 2, 4, 8]
    payloads = []
    while True:
        try:
            payloads.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert [r.payload for r in payloads] == [
        f'{{"event":"chat","data":{{"msgId":"{i}"}}}}' for i in range(10)
    ]
    assert all(r.source == "websocket:0" for r in payloads)
    assert stats.records == 10
    assert stats.connects == 3  # the "close" one handshook too
    assert stats.failures >= 8
    assert stats.state in ("backoff", "connecting")
    assert stats.last_error is not None


async def test_connect_timeout_counts_as_failure(autojump_clock: trio.testing.MockClock) -> None:
    """A server that never answers the handshake times out after connect_timeout_s."""

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    send, _receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            cfg = ws_config(port, connect_timeout_s=3.0, backoff_initial_s=1.0, backoff_max_s=1.0)
            source = WebsocketSource(cfg, rng=UpperBound())
            nursery.start_soon(source.run, send)
            await trio.sleep(3.5)
            assert source.statistics().state == "backoff"
            assert source.statistics().failures == 1
            assert source.statistics().last_error == "no connection within 3s"
            await trio.sleep(8)
            assert source.statistics().failures == 3  # every 3 s + 1 s
            nursery.cancel_scope.cancel()


async def test_refused_connection_is_retried_not_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connection refused is logged and retried forever; run() never raises."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    send, _receive = trio.open_memory_channel[RawRecord](math.inf)
    source = make_source(ws_config(port, backoff_max_s=2.0), room_id="r", index=1)
    assert source.name == "websocket:1"
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, send)
            await trio.sleep(60)
            stats = source.statistics()
            nursery.cancel_scope.cancel()
    assert stats.connects == 0
    assert stats.failures >= 20
    assert stats.records == 0
    assert stats.last_error is not None
    assert stats.last_error.startswith("cannot connect")


async def test_oversized_message_drops_connection_then_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message above max_message_bytes closes the connection; the source reconnects."""
    connections = 0
    second = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        if connections == 2:
            second.set()
        ws = await request.accept()
        await ws.send_message("small")
        await ws.send_message("x" * 5000)
        # The client may have closed with 1009 already (it reads the first two in one
        # go): that is the behaviour under test, not an error of this relay.
        with contextlib.suppress(ConnectionClosed):
            await ws.send_message("after")
        await trio.sleep(1)
        await ws.aclose()

    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            cfg = ws_config(port, max_message_bytes=1000, backoff_initial_s=1.0)
            source = WebsocketSource(cfg, rng=UpperBound())
            nursery.start_soon(source.run, send)
            await second.wait()
            nursery.cancel_scope.cancel()
    assert receive.receive_nowait().payload == "small"
    assert "1009" in (source.statistics().last_error or "")


async def test_binary_messages_pass_as_bytes(autojump_clock: trio.testing.MockClock) -> None:
    """Binary frames are pushed as bytes, text frames as str, untouched."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message(b'{"event":"like"}')
        await ws.send_message('{"event":"chat"}')
        await trio.sleep_forever()

    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            source = WebsocketSource(ws_config(port))
            nursery.start_soon(source.run, send)
            first = await receive.receive()
            second = await receive.receive()
            assert source.statistics().state == "connected"
            assert source.statistics().connects == 1
            nursery.cancel_scope.cancel()
    assert first.payload == b'{"event":"like"}'
    assert second.payload == '{"event":"chat"}'
    assert first.received_at <= second.received_at
    assert first.wall_ms > 1_600_000_000_000


async def test_closed_channel_propagates(autojump_clock: trio.testing.MockClock) -> None:
    """If the room closes its channel, the source stops with the channel's error."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("one")
        await trio.sleep_forever()

    send, receive = trio.open_memory_channel[RawRecord](0)
    await receive.aclose()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            source = WebsocketSource(ws_config(port))
            with pytest.raises(trio.BrokenResourceError):
                await source.run(send)
            nursery.cancel_scope.cancel()


class BatchRecorder:
    """A room side that takes batches (a BatchSink) and remembers each call's records."""

    def __init__(self) -> None:
        self.calls: list[list[RawRecord]] = []

    async def send(self, value: RawRecord, /) -> None:
        self.calls.append([value])
        await trio.lowlevel.checkpoint()

    async def send_batch(self, values: Sequence[RawRecord], /) -> None:
        self.calls.append(list(values))
        await trio.lowlevel.checkpoint()


async def test_reads_wait_for_read_after_and_what_waited_is_read_in_one_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With Pacing.read_after at 1.0, messages sent at 0.1..0.5 are not pushed before
    1.0, then come in one send_batch, in order, stamped 1.0. Once the hold is past,
    messages are read as they come. read_after is asked again once the socket has
    bytes: moved to 5.0 while the source waited on its socket, it holds the message
    that woke it (3.0) with those after it."""
    hold_until = 1.0
    sends = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [2.0, 2.1], "c": [3.0], "d": [3.5, 4.0]}
    timeline = sorted((t, f"{group}{i}") for group, ts in sends.items() for i, t in enumerate(ts))

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for at, payload in timeline:
            await trio.sleep_until(at)
            await ws.send_message(payload)
        await trio.sleep_forever()

    sink = BatchRecorder()
    assert isinstance(sink, BatchSink)
    pacing = Pacing(read_after=lambda: hold_until)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            source = WebsocketSource(ws_config(port), pacing=pacing)
            nursery.start_soon(source.run, sink)
            await trio.sleep_until(0.9)
            assert source.statistics().state == "connected"
            assert sink.calls == [] and source.statistics().records == 0, "held until 1.0"
            await trio.sleep_until(2.5)
            hold_until = 5.0  # the source is waiting on its socket by now
            await trio.sleep_until(6.0)
            stats = source.statistics()
            nursery.cancel_scope.cancel()
    calls = [
        ([r.payload for r in call], {round(r.received_at, 6) for r in call}) for call in sink.calls
    ]
    assert calls == [
        (["a0", "a1", "a2", "a3", "a4"], {1.0}),
        (["b0"], {2.0}),
        (["b1"], {2.1}),
        (["c0", "d0", "d1"], {5.0}),
    ]
    first = sink.calls[0]
    assert all(r.received_at >= 1.0 for r in first)
    assert len({r.wall_ms for r in first}) == 1
    assert all(r.source == "websocket" for call in sink.calls for r in call)
    assert stats.records == 10
    assert stats.last_record_at == pytest.approx(5.0)


async def test_a_held_read_hands_its_batch_over_within_one_turn_of_the_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A source that slept until its room's tick reads at once (a tick's worth is
    there), without first waiting on its socket, which takes a turn of trio's loop of
    its own: a task woken at the same tick finds the batch handed over after one
    checkpoint, as the actor, which takes one more turn at its tick, expects (see
    RoomActor.run). Eight ticks: trio runs each turn's tasks in a random order."""
    tick_s = 0.016
    ticks = [1.0 + i * tick_s for i in range(8)]
    sent = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for i, tick in enumerate(ticks):
            await trio.sleep_until(tick - tick_s / 2)
            await ws.send_message(f"m{i}")
        sent.set()
        await trio.sleep_forever()

    due = iter(ticks)
    sink = BatchRecorder()
    pacing = Pacing(read_after=lambda: next(due, math.inf))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(nursery, handler)
            nursery.start_soon(WebsocketSource(ws_config(port), pacing=pacing).run, sink)
            for i, tick in enumerate(ticks):
                await trio.sleep_until(tick)
                await trio.lowlevel.checkpoint()
                assert [[r.payload for r in call] for call in sink.calls] == [
                    [f"m{j}"] for j in range(i + 1)
                ], f"tick {i}"
            await sent.wait()
            nursery.cancel_scope.cancel()


async def test_push_all_into_a_plain_channel_sends_one_by_one_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A trio channel is no BatchSink: push_all sends each record in order, waiting for
    each (an unbuffered channel here), and counts each as the channel takes it; the
    records carry the one time they were read together."""
    meter = SourceMeter("websocket:2")
    meter.fail("earlier")
    send, receive = trio.open_memory_channel[RawRecord](0)
    assert not isinstance(send, BatchSink)
    payloads: list[bytes | str] = ["a", b"b", "c", b"d", "e"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meter.push_all, send, payloads)
            taken = [await receive.receive() for _ in range(2)]
            await trio.sleep(1)
            assert meter.records == 2, "counted as taken, not before"
            taken += [await receive.receive() for _ in range(3)]
    assert [r.payload for r in taken] == payloads
    assert {r.received_at for r in taken} == {0.0}
    assert {r.source for r in taken} == {"websocket:2"}
    assert meter.records == 5
    assert (meter.last_record_at, meter.failures_in_a_row, meter.failures) == (0.0, 0, 1)


async def test_before_read_says_whether_it_waited(autojump_clock: trio.testing.MockClock) -> None:
    """Pacing.before_read waits until read_after and says so (the source then reads at
    once); a read_after in the past returns False at once, without a checkpoint."""
    due = 2.0
    pacing = Pacing(read_after=lambda: due)
    with trio.fail_after(10):
        assert await pacing.before_read() is True
        assert trio.current_time() == pytest.approx(2.0)
        with trio.CancelScope() as scope:
            scope.cancel()
            assert await pacing.before_read() is False
        assert not scope.cancelled_caught
        due = -math.inf
        assert await pacing.before_read() is False
