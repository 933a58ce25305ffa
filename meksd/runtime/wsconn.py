"""A dashboard-side WebSocket connection: wsproto parses, meksd owns the bytes out.

Why not trio-websocket here: fanning one delta out to hundreds of dashboards through
``send_message`` costs a task wake-up, a lock, a shielded cancel scope, a wsproto
re-framing and an awaited ``send_all`` per dashboard per delta (see BENCHMARKS.md).
Server frames are unmasked, so the frame for a delta is the same bytes for every
dashboard: it is built once per room (:func:`text_frame`; :func:`binary_frame` for
``meks.v1.msgpack``) and written to each socket with one non-blocking ``send``. Only
what the kernel does not take is kept, in the connection's ``out`` buffer, which a
per-connection writer task drains.

Every byte meant for the peer goes through ``out`` or straight to the socket *only
when ``out`` is empty*, so frames are never interleaved and never torn: a cancelled
or timed-out drain leaves the unsent tail in ``out``, where it still belongs.
The handshake and all inbound parsing (fragments, control frames, UTF-8, close
codes) stay wsproto's.

Sockets are plain non-blocking stdlib sockets waited on with
``trio.lowlevel.wait_readable``/``wait_writable``; closing calls
``trio.lowlevel.notify_closing`` first so no task is left waiting on a dead fd.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

RECV_BYTES = 65536
MAX_HANDSHAKE_BYTES = 16384
SEND_BUFFER_BYTES = 256 * 1024
"""Kernel send buffer per dashboard socket. Bounds what a client that stops reading
holds in kernel memory, and makes it show as congested soon enough to be handled
(lagged, or closed after ``send_timeout_s``) rather than hidden in a 4 MiB buffer."""
MAX_OUT_BYTES = 16 * 1024 * 1024
"""A connection with more than this waiting for its socket is killed: a client that
floods requests while reading nothing cannot make the server buffer without end."""


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (UTF-8 JSON)."""
    return _frame(0x81, payload)


def binary_frame(payload: bytes) -> bytes:
    """One unmasked, final binary frame carrying ``payload`` (msgpack)."""
    return _frame(0x82, payload)


def _frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


class ConnectionGone(Exception):
    """The peer closed, the socket broke, or we closed the connection."""


class WsConnection:
    """One accepted socket speaking WebSocket as a server.

    Synchronous methods (``*_nowait``, :meth:`kill`) never checkpoint. The owner runs
    :meth:`run_writer` in a task and reads with :meth:`next_message`.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_message_bytes: int,
        send_timeout_s: float,
    ) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        with contextlib.suppress(OSError):
            # Every write is a whole frame meant to leave now. With Nagle's algorithm a
            # frame written while the previous one is unacknowledged waits for the
            # client's (delayed, up to 40 ms) ACK: that was most of the latency tail.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.max_message_bytes = max_message_bytes
        self.send_timeout_s = send_timeout_s
        self.ws = WSConnection(ConnectionType.SERVER)
        self.subprotocol: str | None = None
        """The subprotocol the handshake was accepted with (None: none named)."""
        self.out = bytearray()
        self.bytes_sent = 0
        self.dead = False
        self.death: str | None = None
        self.death_reason: str | None = None
        """Why it was killed, as a code: ``send_timeout`` (the peer took no data for
        ``send_timeout_s``), ``backlog`` (more than ``MAX_OUT_BYTES`` waiting),
        ``send_failed`` (the socket broke), or what the caller of :meth:`kill` said."""
        self.close_code: int | None = None
        self.peer_closed = False
        self._eof = False
        self.last_pong = trio.current_time()
        self._writer_wake = trio.Event()
        self._drained = trio.Event()
        self._drained.set()
        self._pending_events: list[object] = []
        self._fragments: list[str | bytes | bytearray] = []
        self._fragment_bytes = 0
        try:
            name = sock.getpeername()
        except OSError:
            name = None
        if isinstance(name, tuple):
            self.peer, self.peer_host = f"{name[0]}:{name[1]}", str(name[0])
        else:  # a unix socket (tests) or a socket already gone
            self.peer, self.peer_host = "local", "local"

    # --- handshake ------------------------------------------------------------------

    async def read_request(self) -> Request:
        """Read bytes until the client's opening handshake is complete."""
        received = 0
        while True:
            for event in self.ws.events():
                if isinstance(event, Request):
                    return event
                raise ConnectionGone(f"unexpected {type(event).__name__} before handshake")
            data = await self._recv()
            if not data:
                raise ConnectionGone("closed before the handshake")
            received += len(data)
            if received > MAX_HANDSHAKE_BYTES:
                raise ConnectionGone("handshake too large")
            try:
                self.ws.receive_data(data or None)
            except RemoteProtocolError as exc:
                raise ConnectionGone(f"bad handshake: {exc}") from None

    def accept_nowait(
        self, *, subprotocol: str | None = None, extra_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer the handshake with 101 (no extensions: our frames are plain)."""
        self.subprotocol = subprotocol
        self._write(
            self.ws.send(
                AcceptConnection(subprotocol=subprotocol, extra_headers=list(extra_headers))
            )
        )

    def reject_nowait(self, status: int, body: bytes) -> None:
        """Answer the handshake with an HTTP error and a short plain-text body."""
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        self._write(
            self.ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        )
        self._write(self.ws.send(RejectData(data=body)))

    # --- sending ----------------------------------------------------------------------

    @property
    def congested(self) -> bool:
        """Bytes are waiting for the socket; new frames must queue behind them."""
        return bool(self.out)

    def send_frame_nowait(self, frame: bytes) -> None:
        """Write a whole pre-built frame now, keeping in ``out`` what the kernel refuses."""
        if self.dead or self.close_code is not None:
            return
        self._write(frame)

    def offer(self, frame: bytes) -> bool:
        """The fan-out's fast path: write a whole pre-built frame if nothing is waiting.

        False (nothing written) when bytes are already queued, the connection is
        closing, or it is dead; the caller then catches up later. True when the
        frame is written or, what the kernel refused of it, queued in ``out``.
        """
        if self.out or self.dead or self.close_code is not None:
            return False
        # _send_now, inline: this runs once per dashboard per delta, and a call is a
        # measurable part of it (BENCHMARKS.md, "per-send Python").
        try:
            n = self.sock.send(frame)
        except OSError as exc:
            self._send_failed(frame, exc)
            return not self.dead
        self.bytes_sent += n
        if n != len(frame):
            self._queue(memoryview(frame)[n:])
            return not self.dead
        return True

    def send_text_nowait(self, payload: bytes) -> None:
        self.send_frame_nowait(text_frame(payload))

    def send_binary_nowait(self, payload: bytes) -> None:
        self.send_frame_nowait(binary_frame(payload))

    def ping_nowait(self, payload: bytes) -> None:
        if not self.dead and self.close_code is None:
            self._write(self.ws.send(Ping(payload=payload)))

    def close_nowait(self, code: int, reason: str = "") -> None:
        """Queue a close frame after everything already queued; no more data after it."""
        if self.dead or self.close_code is not None:
            return
        self.close_code = code
        with contextlib.suppress(LocalProtocolError):
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))

    def _write(self, data: bytes) -> None:
        if self.dead or not data:
            return
        if self.out:
            self._queue(data)
        else:
            self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        """Write what the socket takes of ``data`` now (``out`` is empty), queue the rest."""
        try:
            n = self.sock.send(data)
        except OSError as exc:
            self._send_failed(data, exc)
            return
        self.bytes_sent += n
        if n != len(data):
            self._queue(memoryview(data)[n:])

    def _send_failed(self, data: bytes, exc: OSError) -> None:
        """A first write of ``data`` raised: keep it all if the socket is full, else
        the connection is broken and killed."""
        if isinstance(exc, BlockingIOError):
            self._queue(data)
        else:
            self.kill(f"send failed: {exc.strerror or exc}", reason="send_failed")

    def _queue(self, data: bytes | memoryview) -> None:
        """Keep ``data`` for the writer task (the socket took what came before it)."""
        self.out += data
        if len(self.out) > MAX_OUT_BYTES:
            self.kill(
                f"more than {MAX_OUT_BYTES} bytes waiting for a peer that does not read",
                reset=True,
                reason="backlog",
            )
            return
        if self._drained.is_set():
            self._drained = trio.Event()
        self._writer_wake.set()

    async def run_writer(self) -> None:
        """Drain ``out`` whenever it fills; kill the connection if a drain stalls.

        A socket that takes no byte for ``send_timeout_s`` means the peer stopped
        reading: the connection is killed and reset, so its buffers are freed. A peer
        that reads slowly but steadily is not: every byte taken restarts the clock.
        """
        while not self.dead:
            await self._writer_wake.wait()
            self._writer_wake = trio.Event()
            try:
                await self._drain()
            except trio.TooSlowError:
                self.kill(
                    f"peer took no data for {self.send_timeout_s:g}s",
                    reset=True,
                    reason="send_timeout",
                )

    async def _drain(self) -> None:
        try:
            while self.out and not self.dead:
                with trio.fail_after(self.send_timeout_s):
                    await trio.lowlevel.wait_writable(self.sock)
                try:
                    n = self.sock.send(self.out)
                except BlockingIOError:
                    continue
                self.bytes_sent += n
                del self.out[:n]
        except (OSError, trio.ClosedResourceError) as exc:
            self.kill(f"send failed: {exc}", reason="send_failed")
        if not self.out:
            self._drained.set()

    async def wait_drained(self) -> None:
        """Return once ``out`` is empty (or the connection is dead)."""
        while self.out and not self.dead:
            await self._drained.wait()

    # --- receiving --------------------------------------------------------------------

    async def next_message(self) -> str | bytes:
        """The next complete message from the peer; pings are answered on the way.

        Raises :class:`ConnectionGone` when the peer closes (our close reply is
        queued), the socket breaks, or a message exceeds ``max_message_bytes``
        (closed with 1009) or breaks the protocol (closed with wsproto's code).
        Always a checkpoint, even when a message is already buffered.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            for event in self.ws.events():
                message = self._handle(event)
                if message is not None:
                    return message
            if self.dead:
                raise ConnectionGone(self.death or "closed")
            if self._eof:
                raise ConnectionGone("peer closed the connection")
            data = await self._recv()
            self._eof = not data
            try:
                self.ws.receive_data(data or None)
            except RemoteProtocolError as exc:
                self.close_nowait(1002, "protocol error")
                raise ConnectionGone(f"protocol error: {exc}") from None

    def _handle(self, event: object) -> str | bytes | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            if self.close_code is not None:
                return None  # closing: read and drop until the peer's close frame

            self._fragment_bytes += len(event.data)
            if self._fragment_bytes > self.max_message_bytes:
                self.close_nowait(1009, f"message larger than {self.max_message_bytes} bytes")
                raise ConnectionGone("message too large")
            self._fragments.append(event.data)
            if not event.message_finished:
                return None
            parts, self._fragments, self._fragment_bytes = self._fragments, [], 0
            if isinstance(event, TextMessage):
                return "".join(parts)  # type: ignore[arg-type]
            return b"".join(parts)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            if not self.dead and self.close_code is None:
                self._write(self.ws.send(Pong(payload=event.payload)))
            return None
        if isinstance(event, Pong):
            self.last_pong = trio.current_time()
            return None
        if isinstance(event, CloseConnection):
            self.peer_closed = True
            if self.close_code is None:
                self.close_code = event.code
                with contextlib.suppress(LocalProtocolError):
                    self._write(self.ws.send(event.response()))
            raise ConnectionGone(f"peer closed ({event.code})")
        return None

    async def _recv(self) -> bytes:
        while True:
            if self.dead:
                raise ConnectionGone(self.death or "closed")
            try:
                await trio.lowlevel.wait_readable(self.sock)
            except trio.ClosedResourceError:
                raise ConnectionGone(self.death or "closed") from None
            try:
                return self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                self.kill(f"receive failed: {exc.strerror or exc}")
                raise ConnectionGone(self.death or "closed") from None

    # --- ending -----------------------------------------------------------------------

    def kill(self, why: str, *, reset: bool = False, reason: str = "killed") -> None:
        """Close the socket now; pending output is dropped. Idempotent, synchronous.

        With ``reset``, the close is abortive (RST): the kernel drops what the peer
        never read instead of keeping it for a peer that is not reading.
        """
        if self.dead:
            return
        self.dead = True
        self.death = why
        self.death_reason = reason
        self.out.clear()
        self._writer_wake.set()
        self._drained.set()
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()

    async def aclose(self, code: int, reason: str = "", *, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Close gracefully: queue a close frame, drain, wait briefly for the peer's reply."""
        with trio.move_on_after(timeout):
            self.close_nowait(code, reason)
            with contextlib.suppress(trio.TooSlowError):  # the kill below resets nothing
                await self._drain()
            if not self.dead:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
                while not self.peer_closed and not self.dead:
                    try:
                        await self.next_message()
                    except ConnectionGone:
                        break
        self.kill("closed")
