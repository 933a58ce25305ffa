"""Test helpers: a protocol-checking dashboard client and a fake upstream feed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import msgpack
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    serve_websocket,
    wrap_client_stream,
)

from meksd.core.wire import apply_delta

MSGPACK = ["meks.v1.msgpack"]
"""The subprotocols a msgpack dashboard offers."""


class ProtocolViolation(AssertionError):
    """The server broke a promise of docs/protocol.md."""


@attrs.define
class RoomView:
    """What one dashboard knows of one room, built only from what it received."""

    epoch: str | None = None
    seq: int = -1
    state: dict[str, Any] | None = None
    snapshots: int = 0
    lagged: int = 0
    deltas: int = 0
    expect_snapshot: bool = False

    def take(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "snapshot":
            self.epoch, self.seq, self.state = msg["epoch"], msg["seq"], msg["state"]
            self.snapshots += 1
            self.expect_snapshot = False
        elif kind == "delta":
            if self.expect_snapshot:
                raise ProtocolViolation(f"delta {msg['seq']} after lagged, before a snapshot")
            if self.state is None:
                raise ProtocolViolation("delta before any snapshot")
            if msg["epoch"] != self.epoch or msg["seq"] != self.seq + 1:
                raise ProtocolViolation(
                    f"gap: had {self.epoch}/{self.seq}, got {msg['epoch']}/{msg['seq']}"
                )
            self.state = apply_delta(self.state, msg)
            self.seq = msg["seq"]
            self.deltas += 1
        elif kind == "lagged":
            self.lagged += 1
            self.expect_snapshot = True


class DashClient:
    """A dashboard over a real WebSocket that checks contiguity as it goes.

    With ``msgpack``, it speaks ``meks.v1.msgpack`` (open its socket with
    ``subprotocols=MSGPACK``): it sends msgpack in binary frames and takes only
    binary frames. ``deltas`` keeps every delta received, by seq, when ``record``.
    """

    def __init__(self, url: str, *, msgpack: bool = False, record: bool = False) -> None:
        self.url = url
        self.msgpack = msgpack
        self.views: dict[str, RoomView] = {}
        self.others: list[dict[str, Any]] = []
        self.ws: WebSocketConnection | None = None
        self.record = record
        self.deltas: dict[int, dict[str, Any]] = {}
        self.bytes_received = 0

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        if self.msgpack:
            await self.ws.send_message(msgpack.packb(msg))
        else:
            await self.ws.send_message(orjson.dumps(msg).decode())

    async def subscribe(self, room: str, *, resume: bool = False) -> None:
        msg: dict[str, Any] = {"type": "subscribe", "room": room}
        view = self.views.setdefault(room, RoomView())
        if resume and view.epoch is not None:
            msg["since"] = {"epoch": view.epoch, "seq": view.seq}
        await self.send(msg)

    def take(self, raw: str | bytes) -> None:
        self.bytes_received += len(raw)
        if self.msgpack:
            if not isinstance(raw, bytes):
                raise ProtocolViolation(f"a text frame on a msgpack connection: {raw[:80]!r}")
            decoded = msgpack.unpackb(raw)
        else:
            if not isinstance(raw, str):
                raise ProtocolViolation(f"a binary frame on a JSON connection: {raw[:80]!r}")
            decoded = orjson.loads(raw)
        items = decoded if isinstance(decoded, list) else [decoded]
        for msg in items:
            if self.record and msg["type"] == "delta":
                self.deltas[msg["seq"]] = msg
            room = msg.get("room")
            if msg["type"] in ("snapshot", "delta", "lagged") and room in self.views:
                self.views[room].take(msg)
            else:
                self.others.append(msg)

    async def read_until(self, done: Any, *, timeout: float = 10) -> None:
        """Read messages until ``done()`` is true."""
        assert self.ws is not None
        with trio.fail_after(timeout):
            while not done():
                self.take(await self.ws.get_message())


async def serve_feed(
    payloads: Sequence[bytes],
    *,
    nursery: trio.Nursery,
    chunk: int = 50,
    pause_s: float = 0.01,
    go: trio.Event | None = None,
) -> tuple[int, trio.Event]:
    """A fake upstream feed on 127.0.0.1: sends ``payloads`` to each connecting source.

    Waits for ``go`` (if given), then sends in chunks of ``chunk`` with ``pause_s``
    between chunks (bursts). Returns the port and an event set once a client has
    been sent everything.
    """
    done = trio.Event()

    async def handler(request: Any) -> None:
        ws = await request.accept()
        if go is not None:
            await go.wait()
        try:
            for i, payload in enumerate(payloads):
                await ws.send_message(payload.decode())
                if i % chunk == chunk - 1:
                    await trio.sleep(pause_s)
            done.set()
            await trio.sleep_forever()
        except ConnectionClosed:
            pass

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return server.port, done


@asynccontextmanager
async def open_dashboard(
    url: str,
    *,
    rcvbuf: int | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket whose TCP stream we own and always close.

    trio-websocket 0.12's ``open_websocket_url`` leaks the client socket when the
    server closes first or rejects the handshake; tests run with warnings as errors.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if rcvbuf is None:
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    else:  # a small receive window: the server's sends block soon when we stop reading
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect((parts.hostname, parts.port))
        stream = trio.SocketStream(sock)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                f"{parts.hostname}:{parts.port}",
                resource,
                extra_headers=headers,
                subprotocols=subprotocols,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


_T = TypeVar("_T")


def drain_nowait(receive: trio.MemoryReceiveChannel[_T]) -> list[_T]:
    """Everything queued in ``receive`` now, without waiting."""
    out: list[_T] = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except trio.WouldBlock:
            return out
