"""A bare WebSocket client for tests that must send what a library would refuse to.

Invalid UTF-8 in text frames, binary frames, frames cut short, handshakes with odd
headers or none at all: :func:`open_raw` speaks just enough RFC 6455 to do these
over a real TCP connection on 127.0.0.1, and always closes its socket.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import msgpack
import orjson
import trio

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class RawClosed(Exception):
    """The server closed: ``code`` from its close frame, or None (TCP closed or reset)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class RawClient:
    """One TCP connection speaking WebSocket by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = bytearray()
        self.pings: list[float] = []
        """When each ping came (``trio.current_time()``)."""
        self.answer_pings = True
        """False: pings are noted, never answered (a client that stopped responding)."""
        self.status = 0
        self.body = b""
        self.headers: dict[str, str] = {}
        """The handshake answer's headers (lower-case names; the last of repeats)."""

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                raise RawClosed(None, "connection closed")
            self._buf += chunk

    async def _take(self, n: int) -> bytes:
        await self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def handshake(
        self, port: int, target: str = "/ws", headers: Sequence[tuple[str, str]] = ()
    ) -> int:
        """Send an opening handshake; return the HTTP status (the body is in ``body``)."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers),
        ]
        await self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        while b"\r\n\r\n" not in self._buf:
            await self._fill(len(self._buf) + 1)
        end = self._buf.index(b"\r\n\r\n") + 4
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[:end]
        self.status = int(head.split(" ", 2)[1])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip():
                self.headers[name.strip().lower()] = value.strip()
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if self.status != 101 and length:
            self.body = await self._take(length)
        return self.status

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """One masked frame, as a client must send it."""
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.send_raw(head + mask + masked)

    async def send_text(self, text: str | bytes) -> None:
        await self.send_frame(TEXT, text.encode() if isinstance(text, str) else text)

    async def recv_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked), answering pings on the way
        (unless ``answer_pings`` is off)."""
        while True:
            b0, b1 = await self._take(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self._take(8))
            payload = await self._take(n)
            opcode = b0 & 0x0F
            if opcode == PING:
                self.pings.append(trio.current_time())
                if self.answer_pings:
                    await self.send_frame(PONG, payload)
                continue
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise RawClosed(code, payload[2:].decode("utf-8", "replace"))
            return opcode, payload

    async def recv_json(self) -> object:
        """The next message, decoded (server messages are single text frames)."""
        _, payload = await self.recv_frame()
        return orjson.loads(payload)

    async def recv_msgpack(self) -> object:
        """The next ``meks.v1.msgpack`` message, decoded; it must be a binary frame."""
        opcode, payload = await self.recv_frame()
        assert opcode == BINARY, f"expected a binary frame, got opcode {opcode}: {payload[:80]!r}"
        return msgpack.unpackb(payload)

    async def send_msgpack(self, message: object) -> None:
        await self.send_frame(BINARY, msgpack.packb(message))


@asynccontextmanager
async def open_raw(port: int, *, rcvbuf: int | None = None) -> AsyncIterator[RawClient]:
    """A raw TCP connection to 127.0.0.1:``port``, always closed on exit.

    ``rcvbuf`` shrinks the receive buffer before connecting (a small window), so that
    a client that stops reading fills the server's socket soon.
    """
    if rcvbuf is None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    else:
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        stream = trio.SocketStream(sock)
    try:
        yield RawClient(stream)
    finally:
        await trio.aclose_forcefully(stream)
