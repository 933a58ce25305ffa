"""A dashboard's TCP stream that knows whether a frame was cut, and then writes no more.

trio's ``send_all`` may be interrupted (by a timeout, by cancellation) after writing
part of its data; the bytes that went out are a truncated WebSocket frame, and any
frame written after them would be read by the client as the rest of the cut one.
:class:`FrameGuardStream` counts what each ``send_all`` really wrote. If one stops
partway, the stream is *torn*: every later ``send_all`` raises
``BrokenResourceError`` without writing, so nothing can follow a cut frame, a close
frame included. While it is not torn, the byte stream is at a frame boundary, and a
close frame may still be sent (see ``Dashboard.kill``).

:meth:`FrameGuardStream.abort` closes with ``SO_LINGER`` 0: the kernel sends a TCP
reset and drops whatever the client did not read, instead of keeping its send
buffer alive for minutes trying to deliver it to a client that stopped reading.
"""

from __future__ import annotations

import contextlib
import errno
import socket as stdlib_socket
import struct
from collections.abc import Callable

import trio

__all__ = ["FrameGuardStream"]


class FrameGuardStream(trio.abc.Stream):
    """Wraps a :class:`trio.SocketStream`; tracks cut writes; can abort with a reset."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.inner = stream
        self.socket = stream.socket
        self.torn = False
        """A ``send_all`` stopped after writing part of its data; no more writes."""
        self.bytes_sent = 0
        """Bytes written to the socket so far."""
        self.closed = False
        """:meth:`aclose` was called (by us, or by trio-websocket after a bad handshake)."""
        self.on_close: Callable[[], None] | None = None
        """Called once, by :meth:`aclose` or when the peer closes or resets the
        connection; the server uses it to stop waiting for a handshake that will not
        come (trio-websocket answered 400 and closed, or the client left)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.torn:
            raise trio.BrokenResourceError("an earlier write was cut mid-frame")
        total = 0
        with memoryview(data) as view:
            if not view:
                await self.inner.send_all(b"")
                return
            try:
                while total < len(view):
                    with view[total:] as rest:
                        total += await self.socket.send(rest)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("socket was closed") from None
                raise trio.BrokenResourceError(f"socket send failed: {exc}") from exc
            finally:
                self.bytes_sent += total
                if 0 < total < len(view):
                    self.torn = True

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.inner.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._gone()
            raise
        if not data:
            self._gone()
        return data

    async def aclose(self) -> None:
        self.closed = True
        self._gone()
        await self.inner.aclose()

    def _gone(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    async def abort(self) -> None:
        """Close at once with a TCP reset, freeing the kernel buffers on both ends."""
        with contextlib.suppress(OSError):  # already closed, or not a TCP socket
            self.socket.setsockopt(
                stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await trio.aclose_forcefully(self.inner)
