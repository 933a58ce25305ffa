"""The feed side's WebSocket client (``meksd.runtime.sources.wsclient``) over real
sockets on 127.0.0.1: against trio-websocket's server where a library server will do,
and against a raw server writing hand-made frames where the test needs exact control
of what arrives together (client frames are masked: the raw server reads them with
wsproto's server side).

Servers here let the client finish its handshake before they write frames, except in
test_a_message_in_the_same_read_as_the_101_is_not_lost, which is about exactly that.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketRequest, WebSocketServer, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Pong, Request

from meksd.runtime.sources.wsclient import (
    MAX_HANDSHAKE_BYTES,
    MAX_REJECT_BODY,
    FeedClosed,
    FeedConnection,
    FeedHandshakeError,
    FeedRejected,
)
from tests.rawws import BINARY, CLOSE, PING, TEXT

CONT = 0x0


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One unmasked frame, as a server sends it."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def text(message: str) -> bytes:
    return frame(TEXT, message.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode())


class Peer:
    """The server end of one raw connection: what it writes is hand-made; what the
    client sends (masked frames) is read with wsproto's server side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.request: Request | None = None
        self._events: deque[Event] = deque()

    async def read_request(self) -> Request:
        while self.request is None:
            data = await self.stream.receive_some(65536)
            assert data, "the client hung up before its request"
            self.ws.receive_data(data)
            for event in self.ws.events():
                assert isinstance(event, Request), event
                self.request = event
        return self.request

    async def accept(self) -> bytes:
        """Read the opening handshake; return the 101 answer (not sent yet)."""
        await self.read_request()
        return self.ws.send(AcceptConnection())

    async def next_event(self) -> Event:
        """The next thing the client sent after the handshake."""
        while not self._events:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self.ws.receive_data(data or None)
            self._events.extend(self.ws.events())
        return self._events.popleft()


async def serve_raw(nursery: trio.Nursery, handler: Callable[[Peer], Awaitable[None]]) -> int:
    async def on_connection(stream: trio.SocketStream) -> None:
        await handler(Peer(stream))

    listeners = await nursery.start(partial(trio.serve_tcp, on_connection, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def serve_library(
    nursery: trio.Nursery, handler: Callable[[WebSocketRequest], Awaitable[None]]
) -> int:
    server: WebSocketServer = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return server.port


@asynccontextmanager
async def open_feed(
    port: int,
    *,
    max_message_bytes: int = 1 << 20,
    host: str | None = None,
    resource: str = "/feed",
) -> AsyncIterator[FeedConnection]:
    """A FeedConnection to 127.0.0.1:``port``, handshake done; its socket is closed
    on exit."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = FeedConnection(stream, max_message_bytes=max_message_bytes)
        await conn.handshake(host or f"127.0.0.1:{port}", resource)
        yield conn


async def collect_until_closed(conn: FeedConnection) -> tuple[list[str | bytes], FeedClosed]:
    got: list[str | bytes] = []
    while True:
        try:
            got.extend(await conn.receive_messages())
        except FeedClosed as exc:
            return got, exc


# --- against trio-websocket's server -------------------------------------------------


async def test_text_and_binary_messages_arrive_as_sent_from_a_library_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handshake asks for the given resource and host; text comes back as str,
    binary as bytes, in order; the server's close is FeedClosed with its code."""
    seen: list[tuple[str, dict[bytes, bytes]]] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append((request.path, dict(request.headers)))
        ws = await request.accept()
        await trio.sleep(0.01)
        await ws.send_message("héllo")
        await ws.send_message(b"\x00\xffbin")
        await ws.send_message('{"event":"chat"}')
        await trio.sleep(0.01)
        await ws.aclose(1001, "relay restarting")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_library(nursery, handler)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                conn = FeedConnection(stream, max_message_bytes=1000)
                await conn.handshake(f"relay.example:{port}", "/feed?room=a%20b")
                got, closed = await collect_until_closed(conn)
            nursery.cancel_scope.cancel()
    assert got == ["héllo", b"\x00\xffbin", '{"event":"chat"}']
    assert [type(m) for m in got] == [str, bytes, str]
    assert (closed.code, closed.reason) == (1001, "relay restarting")
    assert closed.describe() == "connection closed (code 1001, relay restarting)"
    path, headers = seen[0]
    assert path == "/feed?room=a%20b"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"sec-websocket-version"] == b"13"


async def test_a_library_servers_rejection_is_feed_rejected_with_its_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """trio-websocket's ``reject(403, body=...)`` comes back as FeedRejected(403, body)."""

    async def handler(request: WebSocketRequest) -> None:
        await request.reject(403, body=b"room is private")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_library(nursery, handler)
            with pytest.raises(FeedRejected) as caught:
                async with open_feed(port):
                    pass
            nursery.cancel_scope.cancel()
    assert (caught.value.status_code, caught.value.body) == (403, b"room is private")


# --- batches ---------------------------------------------------------------------------


async def test_frames_written_together_come_back_in_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Several frames in one write: one receive_messages() returns all of them, in order,
    text as str and binary as bytes; frames written later come in a later call."""
    go = trio.Event()

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await go.wait()
        await peer.stream.send_all(
            text("one") + frame(BINARY, b"\x01two") + text("three") + text("four")
        )
        await trio.sleep(1)
        await peer.stream.send_all(text("five"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                go.set()
                first = await conn.receive_messages()
                first_at = trio.current_time()
                second = await conn.receive_messages()
                second_at = trio.current_time()
            nursery.cancel_scope.cancel()
    assert first == ["one", b"\x01two", "three", "four"]
    assert [type(m) for m in first] == [str, bytes, str, str]
    assert second == ["five"]
    assert second_at - first_at == pytest.approx(1.0)


async def test_each_call_is_a_checkpoint_and_more_than_one_read_arrives_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages written at once, more bytes than one read takes (RECEIVE_BYTES): all
    come back in order over several calls. Every call is a checkpoint, even with bytes
    waiting in the socket: a cancelled call raises Cancelled and takes nothing, so the
    calls after it still get every message."""
    messages = [f"{i:04d}:" + "x" * 2000 for i in range(100)]

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await peer.stream.send_all(b"".join(text(m) for m in messages))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                await trio.sleep(1)  # the server has written what the socket takes
                got: list[str | bytes] = []
                calls = cancelled = 0
                while len(got) < len(messages):
                    with trio.CancelScope() as scope:
                        scope.cancel()
                        # Returns without a checkpoint only with messages that came in
                        # the handshake's read (documented): keep them.
                        got.extend(await conn.receive_messages())
                    cancelled += scope.cancelled_caught
                    got.extend(await conn.receive_messages())
                    calls += 1
            nursery.cancel_scope.cancel()
    assert got == messages
    assert calls >= 2 and cancelled >= calls - 1


async def test_after_wait_reads_at_once_without_a_second_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After ``after_wait`` (the source slept until its room wanted the next read) the
    next call reads what is there without yielding first: even in a cancelled scope it
    returns the messages. Without it, the same call is a checkpoint."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await peer.stream.send_all(text("one"))
        await trio.sleep(1)
        await peer.stream.send_all(text("two"))
        await trio.sleep(1)
        await peer.stream.send_all(text("three"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                assert await conn.receive_messages() == ["one"]  # a short read
                await trio.sleep(1.5)  # "two" is waiting in the socket
                conn.after_wait()
                with trio.CancelScope() as scope:
                    scope.cancel()
                    second = await conn.receive_messages()
                assert not scope.cancelled_caught and second == ["two"]
                await trio.sleep(1)  # "three" is waiting; no after_wait this time
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await conn.receive_messages()
                assert scope.cancelled_caught
                assert await conn.receive_messages() == ["three"]
            nursery.cancel_scope.cancel()


async def test_receive_messages_waits_while_nothing_is_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fragmented message written over several writes (a ping between its fragments, a
    UTF-8 character split across two of them) comes back once, whole, in one call;
    a fragmented binary message too."""
    e_acute = "é".encode()  # two bytes: split between fragments

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(frame(TEXT, b"caf" + e_acute[:1], fin=False))
        await trio.sleep(0.5)
        await peer.stream.send_all(frame(CONT, e_acute[1:] + b" au ", fin=False) + frame(PING))
        await trio.sleep(0.5)
        await peer.stream.send_all(frame(CONT, b"lait", fin=True))
        await trio.sleep(0.5)
        await peer.stream.send_all(
            frame(BINARY, b"\x00\x01", fin=False)
            + frame(CONT, b"", fin=False)
            + frame(CONT, b"\x02", fin=True)
        )
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                started = trio.current_time()
                first = await conn.receive_messages()
                waited = trio.current_time() - started
                second = await conn.receive_messages()
            nursery.cancel_scope.cancel()
    assert first == ["café au lait"]
    assert waited == pytest.approx(1.1)  # returned when the last fragment came, not before
    assert second == [b"\x00\x01\x02"]


async def test_a_message_in_the_same_read_as_the_101_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay that accepts and sends at once (101 and a frame in one write): the first
    receive_messages() returns that message (the module says so in handshake())."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept() + text("first") + text("second"))
        await trio.sleep(1)
        await peer.stream.send_all(text("third"))
        await trio.sleep_forever()

    got: list[str | bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                while "third" not in got:
                    got.extend(await conn.receive_messages())
            nursery.cancel_scope.cancel()
    assert got == ["first", "second", "third"]


async def test_after_wait_holds_for_the_next_call_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``after_wait`` is taken by the next call even when that call reads nothing (the
    messages came with the 101): the call after it is a checkpoint again."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept() + text("first"))
        await trio.sleep(1)
        await peer.stream.send_all(text("second"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                conn.after_wait()
                first = await conn.receive_messages()
                await trio.sleep(2)  # "second" is waiting in the socket
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await conn.receive_messages()
                assert scope.cancelled_caught
                second = await conn.receive_messages()
            nursery.cancel_scope.cancel()
    assert (first, second) == (["first"], ["second"])


async def test_wait_readable_waits_only_when_a_read_would(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages that came with the 101 are there to take: no wait, no checkpoint. Once
    a read has drained the socket it waits for the next bytes (True), and the read
    after ``after_wait`` takes them at once."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept() + text("first"))
        await trio.sleep(1)
        await peer.stream.send_all(text("second"))
        await trio.sleep(1)
        await peer.stream.send_all(text("third"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    assert await conn.wait_readable() is False, "a message is there to take"
                assert not scope.cancelled_caught, "and it was no checkpoint"
                got = [await conn.receive_messages()]
                got.append(await conn.receive_messages())  # reads until the socket is empty
                start = trio.current_time()
                assert await conn.wait_readable() is True
                woke = trio.current_time() - start
                conn.after_wait()
                got.append(await conn.receive_messages())
            nursery.cancel_scope.cancel()
    assert got == [["first"], ["second"], ["third"]]
    assert woke == pytest.approx(1.0, abs=0.01)


async def test_a_101_written_in_pieces_completes_the_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The request names the given host and resource; the answer to it may come over
    several reads."""
    requests: list[Request] = []

    async def handler(peer: Peer) -> None:
        answer = await peer.accept()
        assert peer.request is not None
        requests.append(peer.request)
        for i in range(0, len(answer), 7):
            await peer.stream.send_all(answer[i : i + 7])
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        await peer.stream.send_all(text("hello"))
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port, host="relay.example:8443", resource="/r/a?x=1") as conn:
                got = await conn.receive_messages()
            nursery.cancel_scope.cancel()
    assert got == ["hello"]
    assert [(r.host, r.target) for r in requests] == [("relay.example:8443", "/r/a?x=1")]


# --- control frames and the end of a connection ----------------------------------------


async def test_a_ping_is_answered_with_a_pong_while_waiting_for_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ping alone is answered (same payload) while receive_messages() waits on; a ping
    among messages is answered too and does not split the batch."""
    pongs: list[bytes] = []

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(frame(PING, b"hb-1"))
        event = await peer.next_event()
        assert isinstance(event, Pong), event
        pongs.append(event.payload)
        # Only once the pong came back does a message follow: without the pong the
        # client would wait forever (and the test time out).
        await peer.stream.send_all(text("a") + frame(PING, b"hb-2") + text("b"))
        event = await peer.next_event()
        assert isinstance(event, Pong), event
        pongs.append(event.payload)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                got = await conn.receive_messages()
                await trio.sleep(0.1)  # the server reads the second pong
            nursery.cancel_scope.cancel()
    assert got == ["a", "b"]
    assert pongs == [b"hb-1", b"hb-2"]


async def test_a_close_frame_returns_earlier_messages_then_raises_feed_closed_and_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message and a close (4000, reason) in one write: the message comes first, then
    FeedClosed(4000, reason), again on every later call; the client answers with a
    close frame of the same code."""
    answered: list[CloseConnection] = []

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(text("last words") + close_frame(4000, "shutting down"))
        event = await peer.next_event()
        assert isinstance(event, CloseConnection), event
        answered.append(event)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                got = await conn.receive_messages()
                with pytest.raises(FeedClosed) as first:
                    await conn.receive_messages()
                with pytest.raises(FeedClosed) as again:
                    await conn.receive_messages()
                await trio.sleep(0.1)  # the server reads the answer
            nursery.cancel_scope.cancel()
    assert got == ["last words"]
    assert (first.value.code, first.value.reason) == (4000, "shutting down")
    assert first.value.describe() == "connection closed (code 4000, shutting down)"
    assert (again.value.code, again.value.reason) == (4000, "shutting down")
    assert [(e.code, e.reason) for e in answered] == [(4000, "shutting down")]


async def test_tcp_eof_is_feed_closed_1006(autojump_clock: trio.testing.MockClock) -> None:
    """The relay drops the TCP connection without a close frame: the messages it sent
    first, then FeedClosed(1006, "connection lost"), on every later call too."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(text("before"))
        await trio.sleep(0.1)
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                got, closed = await collect_until_closed(conn)
                with pytest.raises(FeedClosed) as again:
                    await conn.receive_messages()
            nursery.cancel_scope.cancel()
    assert got == ["before"]
    assert (closed.code, closed.reason) == (1006, "connection lost")
    assert again.value.code == 1006


async def test_a_reset_connection_is_broken_resource_not_os_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The relay resets the TCP connection (RST): the message before it arrives, then
    trio.BrokenResourceError, as the stream's own ``receive_some`` would raise (the
    source reports "connection broken", not "cannot connect")."""

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await peer.stream.send_all(text("before"))
        await trio.sleep(0.5)
        peer.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                assert await conn.receive_messages() == ["before"]
                with pytest.raises(trio.BrokenResourceError) as broken:
                    await conn.receive_messages()
            nursery.cancel_scope.cancel()
    assert isinstance(broken.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
async def test_a_message_over_max_message_bytes_closes_with_1009_after_the_ones_before_it(
    fragmented: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """max_message_bytes=1000: a message of exactly 1000 bytes passes; one of 1001 (in one
    frame, or in fragments each under the limit) closes the connection with 1009. The
    messages before it are returned; none after it; the relay gets a 1009 close."""
    answered: list[CloseConnection] = []
    big = b"y" * 1001
    if fragmented:
        oversized = frame(TEXT, big[:600], fin=False) + frame(CONT, big[600:], fin=True)
    else:
        oversized = frame(TEXT, big)

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(
            text("a") + frame(BINARY, b"x" * 1000) + oversized + text("never")
        )
        event = await peer.next_event()
        assert isinstance(event, CloseConnection), event
        answered.append(event)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port, max_message_bytes=1000) as conn:
                got, closed = await collect_until_closed(conn)
                await trio.sleep(0.1)  # the server reads the close frame
            nursery.cancel_scope.cancel()
    assert got == ["a", b"x" * 1000]
    assert closed.code == 1009
    assert [e.code for e in answered] == [1009]


async def test_invalid_utf8_in_a_text_message_ends_the_connection_with_1007(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A protocol error from the relay (invalid UTF-8 in a text frame) is FeedClosed with
    wsproto's code, answered with a close frame, after the valid message before it."""
    answered: list[CloseConnection] = []

    async def handler(peer: Peer) -> None:
        await peer.stream.send_all(await peer.accept())
        await trio.sleep(0.1)
        await peer.stream.send_all(text("fine") + frame(TEXT, b"bad \xff\xfe"))
        event = await peer.next_event()
        assert isinstance(event, CloseConnection), event
        answered.append(event)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            async with open_feed(port) as conn:
                got, closed = await collect_until_closed(conn)
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert got == ["fine"]
    assert closed.code == 1007
    assert [e.code for e in answered] == [1007]


# --- the handshake ---------------------------------------------------------------------


REJECTIONS = {
    "content-length": (
        [b"HTTP/1.1 403 Forbidden\r\nContent-Length: 17\r\n\r\nno access for you"],
        403,
        b"no access for you",
    ),
    "until-close": (
        [b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\ntry ", b"later"],
        503,
        b"try later",
    ),
    "no-body": ([b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"], 404, b""),
}


@pytest.mark.parametrize("case", REJECTIONS, ids=list(REJECTIONS))
async def test_an_http_answer_to_the_handshake_is_feed_rejected_with_status_and_body(
    case: str, autojump_clock: trio.testing.MockClock
) -> None:
    """403 with a Content-Length body, 503 with a body until the connection closes (over
    two writes), 404 without a body: FeedRejected(status, body)."""
    writes, status, body = REJECTIONS[case]

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        for chunk in writes:
            await peer.stream.send_all(chunk)
            await trio.sleep(0.1)
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            with pytest.raises(FeedRejected) as caught:
                async with open_feed(port):
                    pass
            nursery.cancel_scope.cancel()
    assert (caught.value.status_code, caught.value.body) == (status, body)


async def test_a_rejection_with_a_large_body_is_still_feed_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 503 with a 100 kB HTML page: FeedRejected(503) with the first MAX_REJECT_BODY bytes."""
    page = b"<html>" + b"x" * 100_000 + b"</html>"
    assert len(page) > MAX_HANDSHAKE_BYTES

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Length: {len(page)}\r\n\r\n"
        await peer.stream.send_all(head.encode() + page)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            with pytest.raises(FeedRejected) as caught:
                async with open_feed(port):
                    pass
            nursery.cancel_scope.cancel()
    assert caught.value.status_code == 503
    assert caught.value.body == page[:MAX_REJECT_BODY]


BAD_ANSWERS = {
    "closed-mid-handshake": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n",
    "wrong-accept-key": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
    ),
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "endless-headers": b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Pad: y\r\n" * 10_000,
}


@pytest.mark.parametrize("case", BAD_ANSWERS, ids=list(BAD_ANSWERS))
async def test_an_answer_that_is_neither_101_nor_http_is_a_handshake_error(
    case: str, autojump_clock: trio.testing.MockClock
) -> None:
    """A relay that hangs up halfway through its answer, a 101 with the wrong accept key,
    something that is not HTTP, headers that never end: FeedHandshakeError."""

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.stream.send_all(BAD_ANSWERS[case])
        await peer.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_raw(nursery, handler)
            with pytest.raises(FeedHandshakeError) as caught:
                async with open_feed(port):
                    pass
            nursery.cancel_scope.cancel()
    if case == "closed-mid-handshake":
        assert str(caught.value) == "connection closed during the handshake"
