"""The ``websocket`` source: a WebSocket client of a feed relay.

Each WebSocket message (text or binary) becomes one ``RawRecord``, pushed untouched,
in order. Messages are read a batch at a time (:mod:`meksd.runtime.sources.wsclient`)
and, within a tick of the room's last publish, not before the room's next tick
(:meth:`~meksd.runtime.sources.base.Pacing.before_read`).
When the connection cannot be opened or drops, the source waits with exponential
backoff and full jitter (a delay drawn uniformly from ``[0, min(backoff_max_s,
backoff_initial_s · 2^n)]`` after the n-th consecutive failure) and connects again.
A connection that delivered at least one message resets ``n`` to 0, so a relay that
restarts now and then is rejoined quickly while one that is down is not hammered.
Once the room's stream ended, :class:`~meksd.runtime.sources.base.Pacing` stretches
every delay to 30-60 s (``ended_backoff_s``).

``connect_timeout_s`` bounds TCP connect, TLS and the WebSocket handshake together.

The source opens (and therefore always closes) the TCP/TLS stream itself, whatever
ends the connection: over hours of reconnects nothing leaks a descriptor.
"""

from __future__ import annotations

import random
import ssl
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import trio
from loguru import logger

from meksd.config import WebsocketSourceConfig
from meksd.runtime.sources.base import (
    Jitter,
    Pacing,
    RecordSink,
    SourceMeter,
    SourceStatistics,
    full_jitter_delay,
)
from meksd.runtime.sources.wsclient import (
    FeedClosed,
    FeedConnection,
    FeedHandshakeError,
    FeedRejected,
)

__all__ = ["WebsocketSource"]

_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@attrs.frozen
class _Target:
    """Where a ``ws://`` or ``wss://`` URL points."""

    host: str
    port: int
    tls: bool
    host_header: str
    resource: str

    @classmethod
    def from_url(cls, url: str) -> _Target:
        parts = urlsplit(url)
        tls = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == (443 if tls else 80) else f"{shown}:{port}"
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host, port, tls, host_header, resource)


class _RoomGone(Exception):
    """The room closed its channel: carries the channel's error out of the session."""

    def __init__(self, error: trio.BrokenResourceError | trio.ClosedResourceError) -> None:
        super().__init__(error)
        self.error = error


class WebsocketSource:
    """Reads a relay's WebSocket feed; reconnects forever with backoff."""

    def __init__(
        self,
        config: WebsocketSourceConfig,
        *,
        name: str = "websocket",
        room_id: str = "",
        rng: Jitter | None = None,
        ssl_context: ssl.SSLContext | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        """``rng`` draws the backoff jitter (injectable for tests); ``ssl_context``
        is used for ``wss://`` (default: the system's trust store); ``pacing``
        stretches reconnect delays once the room's stream ended."""
        self._config = config
        self._pacing = pacing if pacing is not None else Pacing()
        self._target = _Target.from_url(config.url)
        self._meter = SourceMeter(name)
        self._rng: Jitter = rng if rng is not None else random.Random()
        self._ssl_context = ssl_context
        self._log = logger.bind(room=room_id, source=name)

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        """The source's counters now. Synchronous; never checkpoints."""
        return self._meter.snapshot()

    async def run(
        self,
        send: RecordSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, push every message into ``send``, reconnect on failure; until
        cancelled. Only the channel's own errors (the room closed it) escape."""
        task_status.started()
        cfg = self._config
        attempt = 0
        while True:
            self._meter.state = "connecting"
            records_before = self._meter.records
            try:
                reason = await self._connect_and_read(send)
            except _RoomGone as gone:
                raise gone.error from None
            self._meter.fail(reason)
            if self._meter.records > records_before:
                attempt = 0
            delay = full_jitter_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng)
            delay = self._pacing.delay(delay, self._rng)
            attempt += 1
            self._meter.state = "backoff"
            self._log.bind(event="source_backoff").warning(
                "feed {url} unavailable ({reason}); retrying in {delay:.2f}s",
                url=cfg.url,
                reason=reason,
                delay=delay,
            )
            await trio.sleep(delay)

    async def _connect_and_read(self, send: RecordSink) -> str:
        """One connection's life; returns why it ended."""
        deadline = trio.current_time() + self._config.connect_timeout_s
        try:
            with trio.fail_at(deadline):
                stream = await self._open_stream()
            async with stream:
                await self._session(stream, send, deadline)
        except _RoomGone:
            raise
        except Exception as exc:
            return self._describe(exc)

    async def _open_stream(self) -> _Stream:
        target = self._target
        if not target.tls:
            return await trio.open_tcp_stream(target.host, target.port)
        context = self._ssl_context or ssl.create_default_context()
        return await trio.open_ssl_over_tcp_stream(
            target.host, target.port, ssl_context=context, https_compatible=True
        )

    async def _session(self, stream: _Stream, send: RecordSink, deadline: float) -> NoReturn:
        cfg = self._config
        conn = FeedConnection(stream, max_message_bytes=cfg.max_message_bytes)
        with trio.fail_at(deadline):
            await conn.handshake(self._target.host_header, self._target.resource)
        self._meter.connects += 1
        self._meter.state = "connected"
        self._log.bind(event="source_connected").info("connected to {url}", url=cfg.url)
        while True:  # ends with FeedClosed (or a stream error): _describe says why
            # Read when the room wants the messages (its next tick, see
            # Pacing.before_read): after sleeping until the tick, at once (a tick's
            # worth is there); otherwise once the feed has sent something, asked again
            # then: the room may have published, and moved its tick, while this task
            # waited on its socket.
            waited = await self._pacing.before_read()
            if not waited and await conn.wait_readable():
                await self._pacing.before_read()
                waited = True
            if waited:
                conn.after_wait()
            messages = await conn.receive_messages()
            try:
                await self._meter.push_all(send, messages)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _RoomGone(exc) from exc

    def _describe(self, exc: BaseException) -> str:
        cfg = self._config
        if isinstance(exc, FeedClosed):
            return exc.describe()
        if isinstance(exc, FeedRejected):
            return f"handshake rejected with HTTP {exc.status_code}"
        if isinstance(exc, trio.TooSlowError):
            return f"no connection within {cfg.connect_timeout_s:g}s"
        if isinstance(exc, FeedHandshakeError):
            return f"handshake failed: {exc}"
        if isinstance(exc, OSError):
            return f"cannot connect: {exc}"
        if isinstance(exc, trio.BrokenResourceError):
            return f"connection broken: {exc.__cause__ or exc!r}"
        self._log.opt(exception=exc).error("unexpected error reading {url}", url=cfg.url)
        return f"unexpected error: {exc!r}"
