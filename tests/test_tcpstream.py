"""FrameGuardStream: cut writes are known, nothing follows them, resets free buffers."""

from __future__ import annotations

import errno
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from trio_websocket import wrap_server_stream

from meksd.config import ServerConfig
from meksd.runtime.dashboard import Dashboard
from meksd.runtime.hub import Hub
from meksd.runtime.stats import DashboardTotals
from meksd.runtime.tcpstream import FrameGuardStream
from tests.rawws import CLOSE, RawClient

SMALL = 8192


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(server side, client side) of one loopback TCP connection with small buffers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_sock = trio.socket.socket()
    client_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, SMALL)
    await client_sock.connect(("127.0.0.1", port))
    server = await listeners[0].accept()
    await listeners[0].aclose()
    server.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, SMALL)
    client = trio.SocketStream(client_sock)
    try:
        yield server, client
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(client)


def fill(stream: trio.SocketStream) -> int:
    """Write junk without blocking until the kernel takes no more; how much was written."""
    total = 0
    for chunk in (4096, 1):
        while True:
            try:
                total += stream.socket._sock.send(b"j" * chunk, trio.socket.MSG_DONTWAIT)  # type: ignore[attr-defined]
            except BlockingIOError:
                break
    return total


async def test_a_cut_write_tears_the_stream_and_nothing_follows() -> None:
    """A send_all interrupted after some bytes marks the stream torn; later writes raise without writing."""
    with trio.fail_after(10):
        async with tcp_pair() as (server, _client):
            guard = FrameGuardStream(server)
            with trio.move_on_after(0.2):
                await guard.send_all(b"x" * 4_000_000)
            assert guard.torn and 0 < guard.bytes_sent < 4_000_000
            sent = guard.bytes_sent
            with pytest.raises(trio.BrokenResourceError):
                await guard.send_all(b"close frame")
            assert guard.bytes_sent == sent


async def test_a_timed_out_write_that_wrote_nothing_leaves_the_stream_whole() -> None:
    """A send_all that times out before writing a byte is not a tear: the stream goes on."""
    with trio.fail_after(10):
        async with tcp_pair() as (server, client):
            guard = FrameGuardStream(server)
            junk = fill(server)
            with trio.move_on_after(0.1) as scope:
                await guard.send_all(b"frame")
            assert scope.cancelled_caught and not guard.torn and guard.bytes_sent == 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard.send_all, b"frame")
                data = b""
                while len(data) < junk + 5:
                    data += await client.receive_some()
            assert data[junk:] == b"frame"


async def test_abort_resets_the_connection() -> None:
    """abort() closes with a TCP reset: the peer's pending data is dropped and its read fails."""
    with trio.fail_after(10):
        async with tcp_pair() as (server, client):
            guard = FrameGuardStream(server)
            fill(server)
            await guard.abort()
            with pytest.raises(trio.BrokenResourceError) as info:
                while await client.receive_some():
                    pass
            assert isinstance(info.value.__cause__, ConnectionResetError)
            assert info.value.__cause__.errno == errno.ECONNRESET


async def test_dashboard_send_timeout_closes_1013_when_no_frame_was_cut() -> None:
    """A dashboard send that times out before writing anything is followed by a 1013 close frame."""
    config = ServerConfig(send_timeout_s=0.2, heartbeat_s=30.0)
    totals = DashboardTotals()
    with trio.fail_after(10):
        async with tcp_pair() as (server, client), trio.open_nursery() as nursery:
            guard = FrameGuardStream(server)
            raw = RawClient(client)

            shaken = trio.Event()

            async def handshake() -> None:
                assert await raw.handshake(0) == 101
                shaken.set()

            nursery.start_soon(handshake)
            request = await wrap_server_stream(nursery, guard)
            ws = await request.accept()
            await shaken.wait()  # the client reads nothing more from now on
            junk = fill(server)
            dash = Dashboard(ws, guard, Hub(), config, conn_id="c1", totals=totals)
            finished = trio.Event()

            async def serve() -> None:
                await dash.run()  # its welcome cannot be written: the buffer is full
                finished.set()

            nursery.start_soon(serve)
            while totals.killed == 0:
                await trio.sleep(0.01)
            assert not guard.torn and totals.limited["send_timeout"] == 1
            skipped = 0
            while skipped < junk:  # drain the junk; the pending close frame can go out
                await raw._fill(1)
                n = min(len(raw._buf), junk - skipped)
                del raw._buf[:n]
                skipped += n
            b0, b1 = await raw._take(2)
            assert b0 & 0x0F == CLOSE
            payload = await raw._take(b1 & 0x7F)
            assert struct.unpack("!H", payload[:2])[0] == 1013
            assert payload[2:].startswith(b"send timeout")
            await raw.send_frame(CLOSE, payload[:2])  # complete the close handshake
            await finished.wait()
            nursery.cancel_scope.cancel()
