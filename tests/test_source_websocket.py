"""The websocket source against real trio-websocket servers on 127.0.0.1."""

from __future__ import annotations

import itertools
import math
import random
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketRequest, WebSocketServer, serve_websocket

from meksd.config import WebsocketSourceConfig
from meksd.model.raw import RawRecord
from meksd.runtime.sources import WebsocketSource, make_source
from meksd.runtime.sources.base import full_jitter_delay

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
