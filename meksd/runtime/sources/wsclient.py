"""The feed side's WebSocket client: wsproto parses, reads come in batches.

Why not trio-websocket's client here (it served this until the benchmarks of
BENCHMARKS.md): its public API hands over one message per ``get_message``, from a
reader task through a one-slot channel, so every message costs the process two task
switches and, at 500 messages a second, a wake-up of its own. A room's actor only
needs its events at the next publish tick, so this client reads whatever the socket
holds in one read and returns every complete message in it: with
:meth:`meksd.runtime.sources.base.Pacing.before_read` holding reads until the room's
next tick, a busy room's feed costs about one wake-up per tick instead of one per
message (``docs/architecture.md``, "Feed reads").

The handshake and all parsing (fragments, control frames, UTF-8, close codes) are
wsproto's; this module only moves bytes and enforces ``max_message_bytes``. It runs
over any ``trio.abc.Stream`` (a socket, or TLS for ``wss://``) owned by the caller,
who closes it. One task uses a connection; pings are answered inline.
"""

from __future__ import annotations

import contextlib
import os

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECEIVE_BYTES = 65536
MAX_HANDSHAKE_BYTES = 65536
MAX_REJECT_BODY = 4096


class FeedClosed(Exception):
    """The connection ended: the relay closed it, it broke, or we closed it (1009)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def describe(self) -> str:
        detail = f", {self.reason}" if self.reason else ""
        return f"connection closed (code {self.code}{detail})"


class FeedRejected(Exception):
    """The relay answered the handshake with an HTTP status instead of 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.body = body


class FeedHandshakeError(Exception):
    """The handshake could not complete (bad response, connection lost)."""


class FeedConnection:
    """A client WebSocket over a trio stream, read a batch of messages at a time."""

    def __init__(self, stream: trio.abc.Stream, *, max_message_bytes: int) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        """A plain TCP stream's socket, read directly (see :meth:`_receive`)."""
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._max = max_message_bytes
        self._parts: list[str | bytes | bytearray] = []
        self._part_bytes = 0
        self._closed: FeedClosed | None = None
        self._unparsed = True
        """Bytes were given to wsproto since its events were last taken (or the
        handshake may have left messages in its buffer)."""
        self._drained = False
        """The last read took less than it asked for: the socket is most likely empty."""
        self._waited = False
        """The caller has just waited for bytes (see :meth:`after_wait`); the next
        :meth:`receive_messages` takes it, whether it reads or not."""

    async def handshake(self, host: str, resource: str) -> None:
        """Send the opening handshake and read the answer.

        Raises :class:`FeedRejected` for an HTTP answer, :class:`FeedHandshakeError`
        for anything else that is not a 101.
        """
        await self._stream.send_all(self._ws.send(Request(host=host, target=resource)))
        received = 0
        status: int | None = None
        body = bytearray()
        while True:
            try:
                # Lazily: messages that came in the same read as the 101 must stay in
                # wsproto's buffer for the first receive_messages(), so stop at the
                # AcceptConnection rather than draining the generator.
                for event in self._ws.events():
                    if isinstance(event, AcceptConnection):
                        return
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise FeedRejected(status, b"")
                    elif isinstance(event, RejectData):
                        body += event.data[: MAX_REJECT_BODY - len(body)]
                        if status is not None and (
                            event.body_finished or len(body) >= MAX_REJECT_BODY
                        ):
                            raise FeedRejected(status, bytes(body))
            except RemoteProtocolError as exc:
                raise FeedHandshakeError(f"bad handshake response: {exc}") from None
            data = await self._stream.receive_some(RECEIVE_BYTES)
            if not data:
                if status is not None:
                    raise FeedRejected(status, bytes(body))
                raise FeedHandshakeError("connection closed during the handshake")
            if status is None:  # a rejection's body is bounded by MAX_REJECT_BODY
                received += len(data)
                if received > MAX_HANDSHAKE_BYTES:
                    raise FeedHandshakeError("handshake response too large")
            try:
                self._ws.receive_data(bytes(data))
            except RemoteProtocolError as exc:
                raise FeedHandshakeError(f"bad handshake response: {exc}") from None

    async def wait_readable(self) -> bool:
        """Wait until the socket has bytes, if :meth:`receive_messages` would wait for
        them; whether it waited (then it was a checkpoint, and the read that follows
        takes the bytes at once: see :meth:`after_wait`).

        Returns False at once when there is something to take without waiting (bytes
        wsproto has not parsed, an end to report, a last read that filled its buffer)
        or when the connection is not a plain TCP socket (TLS: its stream is read
        with ``receive_some``, which waits by itself).
        """
        if self._unparsed or self._closed is not None or self._fd is None or not self._drained:
            return False
        await trio.lowlevel.wait_readable(self._fd)
        return True

    def after_wait(self) -> None:
        """The caller has just waited (a checkpoint) for bytes that should be there by
        now: the next read tries the socket at once, neither waiting for it first nor
        yielding (a held read, see ``Pacing.before_read``, costs one task step, not two)."""
        self._waited = True

    async def receive_messages(self) -> list[str | bytes]:
        """Every complete message the socket holds now; waits for at least one.

        A checkpoint (each read from the socket is one, see :meth:`_receive`), except
        for messages that came in the same read as the handshake's answer and for a
        read right after :meth:`after_wait`. Text messages are ``str``, binary ones
        ``bytes``, as sent. Raises :class:`FeedClosed` when the connection ends; a
        message larger than ``max_message_bytes`` closes it with 1009 first.
        """
        messages: list[str | bytes] = []
        waited, self._waited = self._waited, False
        while True:
            if self._unparsed:
                # wsproto's parser is only asked again when it has new bytes: asking
                # it for nothing costs about as much as parsing a small message.
                self._unparsed = False
                await self._take_events(messages)
                if messages:
                    return messages
            if self._closed is not None:
                raise self._closed
            data = await self._receive(waited=waited)
            waited = False
            if not data:
                self._closed = FeedClosed(1006, "connection lost")
                raise self._closed
            self._unparsed = True
            try:
                self._ws.receive_data(bytes(data))
            except RemoteProtocolError as exc:  # pragma: no cover - wsproto reports via events
                raise FeedClosed(1002, str(exc)) from None

    async def _receive(self, *, waited: bool) -> bytes | bytearray:
        """What the socket holds now (b"" at EOF); waits until it holds something.

        Over plain TCP the socket is read with ``os.read`` and waited on with
        ``wait_readable`` (both public: the stream's ``socket.fileno()``), not through
        ``SocketStream.receive_some``: trio's wrapper around a read (conflict check,
        error translation, a checkpoint when the read succeeds at once) cost more
        than the read, once per event in a room whose events come a tick apart.

        A checkpoint unless the caller has just ``waited``. After a short read
        (the usual case: the socket gave all it had) it waits for the socket before
        reading: reading an empty socket fails with an exception that costs more than
        the wait it then needs anyway.
        After a full read it yields once and reads at once. Over TLS, the stream's
        ``receive_some``.
        """
        fd = self._fd
        if fd is None:
            return await self._stream.receive_some(RECEIVE_BYTES)
        if not waited:  # (after a wait of the caller's, that was the checkpoint)
            if self._drained:
                await trio.lowlevel.wait_readable(fd)
            else:
                await trio.lowlevel.checkpoint()
        while True:
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            else:
                self._drained = len(data) < RECEIVE_BYTES
                return data

    async def _take_events(self, messages: list[str | bytes]) -> None:
        out = bytearray()
        for event in self._ws.events():
            if self._closed is not None:
                break
            if isinstance(event, (TextMessage, BytesMessage)):
                self._part_bytes += len(event.data)
                if self._part_bytes > self._max:
                    out += self._close_bytes(1009, f"message larger than {self._max} bytes")
                    self._closed = FeedClosed(1009, "message too big")
                    break
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts, self._part_bytes = self._parts, [], 0
                    if len(parts) == 1:
                        part = parts[0]
                        messages.append(part if isinstance(part, (str, bytes)) else bytes(part))
                    elif isinstance(event, TextMessage):
                        messages.append("".join(parts))  # type: ignore[arg-type]
                    else:
                        messages.append(b"".join(parts))  # type: ignore[arg-type]
            elif isinstance(event, Ping):
                out += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(LocalProtocolError):
                    out += self._ws.send(event.response())
                self._closed = FeedClosed(event.code, event.reason or "")
                break
        if out:
            try:
                await self._stream.send_all(bytes(out))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if self._closed is None:
                    self._closed = FeedClosed(1006, "connection lost")

    def _close_bytes(self, code: int, reason: str) -> bytes:
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""
