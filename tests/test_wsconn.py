"""The dashboard connection layer over wsproto: frames, buffering, stalls, closing."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from meksd.runtime import wsconn
from meksd.runtime.wsconn import ConnectionGone, WsConnection, text_frame

OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Client:
    """A wsproto client over one end of a socketpair, driven by the test."""

    def __init__(self, sock: socket.socket) -> None:
        OPEN.append(sock)
        sock.setblocking(False)
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)

    def send(self, event: object) -> None:
        self.sock.sendall(self.ws.send(event))  # type: ignore[arg-type]

    async def events(self, n: int) -> list[object]:
        out: list[object] = []
        while len(out) < n:
            out.extend(self.ws.events())
            if len(out) >= n:
                break
            await trio.lowlevel.wait_readable(self.sock)
            self.ws.receive_data(self.sock.recv(1 << 20) or None)
        return out


async def connected(**kwargs: float) -> tuple[WsConnection, Client]:
    a, b = socket.socketpair()
    OPEN.append(a)
    server = WsConnection(
        a,
        max_message_bytes=int(kwargs.get("max_message_bytes", 1000)),
        send_timeout_s=kwargs.get("send_timeout_s", 2.0),
    )
    client = Client(b)
    client.send(Request(host="localhost", target="/ws"))
    request = await server.read_request()
    assert request.target == "/ws"
    server.accept_nowait()
    (accepted,) = await client.events(1)
    assert isinstance(accepted, AcceptConnection)
    return server, client


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
async def test_prebuilt_text_frames_parse_as_messages(size: int) -> None:
    """text_frame builds frames a WebSocket client parses, at every length encoding."""
    with trio.fail_after(10):
        server, client = await connected()
        payload = b"x" * size
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run_writer)
            server.send_frame_nowait(text_frame(payload))
            got, finished = "", False
            while not finished:
                for msg in await client.events(1):
                    assert isinstance(msg, TextMessage)
                    got += msg.data
                    finished = msg.message_finished
            assert got == payload.decode()
            nursery.cancel_scope.cancel()
        server.kill("test over")


async def test_frames_queue_in_order_behind_a_congested_socket() -> None:
    """What the kernel refuses waits in ``out``; later frames queue behind it, in order."""
    with trio.fail_after(10):
        server, client = await connected(send_timeout_s=5)
        big = b"y" * 3_000_000
        server.send_frame_nowait(text_frame(big))
        assert server.congested
        server.send_frame_nowait(text_frame(b'"after"'))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run_writer)
            texts: list[str] = []
            buf = ""
            while len(texts) < 2:
                for msg in await client.events(1):
                    assert isinstance(msg, TextMessage)
                    buf += msg.data
                    if msg.message_finished:
                        texts.append(buf)
                        buf = ""
            assert texts == [big.decode(), '"after"']
            await server.wait_drained()
            assert not server.congested
            nursery.cancel_scope.cancel()
        server.kill("test over")


async def test_a_peer_that_stops_reading_is_killed_after_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A drain that makes no progress for send_timeout_s kills the connection and frees its buffer."""
    server, _client = await connected(send_timeout_s=3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run_writer)
        for _ in range(50):
            server.send_frame_nowait(text_frame(b"z" * 200_000))
        assert server.congested
        await trio.sleep(10)
        assert server.dead and "3" in (server.death or "")
        assert server.death_reason == "send_timeout"
        assert not server.out
        nursery.cancel_scope.cancel()


async def test_a_peer_that_reads_slowly_but_steadily_is_not_killed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The send timeout is time without progress, not the length of a drain: a client
    that takes a little every second drains a buffer that needs far longer than
    send_timeout_s, and stays connected."""
    server, client = await connected(send_timeout_s=3)
    client.sock.setblocking(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run_writer)
        for _ in range(50):
            server.send_frame_nowait(text_frame(b"z" * 200_000))
        assert server.congested
        received = 0
        for _ in range(60):  # a second per read: ~10 s of draining, over 3 s
            await trio.sleep(1)
            with contextlib.suppress(BlockingIOError):
                received += len(client.sock.recv(1 << 20))
            if not server.congested:
                break
        assert not server.dead, server.death
        assert not server.congested, "the whole buffer drained"
        assert received > 0
        nursery.cancel_scope.cancel()
    server.kill("test over")


async def test_fragments_pings_and_size_limit() -> None:
    """Fragmented messages are joined, pings answered, and an oversized message closes with 1009."""
    with trio.fail_after(10):
        server, client = await connected(max_message_bytes=10)
        client.send(TextMessage(data="ab", message_finished=False))
        client.send(TextMessage(data="cd", message_finished=True))
        assert await server.next_message() == "abcd"
        client.send(Ping(payload=b"hi"))
        client.send(BytesMessage(data=b"\x01\x02"))
        assert await server.next_message() == b"\x01\x02"
        (pong,) = await client.events(1)
        assert isinstance(pong, Pong) and pong.payload == b"hi"
        client.send(TextMessage(data="x" * 11))
        with pytest.raises(ConnectionGone):
            await server.next_message()
        (close,) = await client.events(1)
        assert isinstance(close, CloseConnection) and close.code == 1009
        server.kill("test over")


async def test_graceful_close_handshake() -> None:
    """aclose sends a close frame after queued data and ends when the peer answers."""
    with trio.fail_after(10):
        server, client = await connected()
        server.send_text_nowait(b'"last"')
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run_writer)
            nursery.start_soon(server.aclose, 1001, "bye")
            msg, close = await client.events(2)
            assert isinstance(msg, TextMessage) and msg.data == '"last"'
            assert isinstance(close, CloseConnection) and close.code == 1001
            client.send(close.response())
        assert server.dead


async def test_a_peer_that_lets_more_than_max_out_bytes_wait_is_killed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past MAX_OUT_BYTES waiting (a client that sends but never reads), the
    connection is killed on the spot with the reason code ``backlog``, and what
    waited is freed; below it, frames only queue."""
    monkeypatch.setattr(wsconn, "MAX_OUT_BYTES", 1_000_000)
    with trio.fail_after(10):
        server, _client = await connected(send_timeout_s=60)
        frame = text_frame(b"q" * 200_000)
        while not server.congested:  # fill the kernel's buffers first
            server.send_frame_nowait(frame)
        for _ in range(4):  # 800 kB more: still under the limit
            server.send_frame_nowait(frame)
        assert not server.dead
        server.send_frame_nowait(frame)
        server.send_frame_nowait(frame)
        assert server.dead
        assert server.death_reason == "backlog"
        assert "1000000 bytes" in (server.death or "")
        assert not server.out


async def test_a_send_to_a_peer_that_is_gone_kills_with_send_failed() -> None:
    """A peer that closed its end: the next write fails and the connection is dead
    with the reason code ``send_failed`` (counted as an aborted send)."""
    with trio.fail_after(10):
        server, client = await connected()
        client.sock.close()
        for _ in range(20):  # the first write may still be taken by the kernel
            server.send_frame_nowait(text_frame(b"x" * 1000))
            if server.dead:
                break
        assert server.dead
        assert server.death_reason == "send_failed"


async def test_offer_writes_what_the_socket_takes_and_refuses_once_bytes_wait() -> None:
    """The fan-out's path: a frame the kernel takes only in part is still offered
    (True) with its tail in ``out``; a frame the kernel takes none of (a full socket)
    is kept whole; while anything waits, offers are refused (False) and nothing more
    is queued, so the writer sends the frames whole and in order."""
    with trio.fail_after(10):
        server, client = await connected(send_timeout_s=5)
        big = b"z" * 3_000_000
        assert server.offer(text_frame(big))
        assert server.congested
        waiting = len(server.out)
        assert 0 < waiting < len(text_frame(big))
        assert not server.offer(text_frame(b'"refused"'))
        assert len(server.out) == waiting
        sent = server.bytes_sent
        server.out.clear()  # as if drained: the socket itself is still full
        assert server.offer(text_frame(b'"kept whole"'))
        assert bytes(server.out) == text_frame(b'"kept whole"')
        assert server.bytes_sent == sent
        assert not server.dead
        client.sock.close()


async def test_offer_to_a_peer_that_is_gone_is_refused_and_kills() -> None:
    with trio.fail_after(10):
        server, client = await connected()
        client.sock.close()
        offers = [server.offer(text_frame(b"x" * 1000)) for _ in range(20)]
        assert server.dead
        assert server.death_reason == "send_failed"
        assert offers[-1] is False
        assert not server.offer(text_frame(b"x"))
