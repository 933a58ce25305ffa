"""Serving a feed: the upstream side that meksd's sources read, on one TCP port.

``meksd simulate`` puts a :class:`FeedServer` in front of a simulated room, and the
tests use the same pieces for fake feeds. One port serves both protocols:

- ``GET /poll?cursor=N``: the ``http-poll`` protocol (``docs/sources.md``). Answers
  ``{"events": [...], "cursor": "<next>", "poll_ms": P}`` with at most ``page``
  events from cursor ``N`` on (without a cursor: from the oldest event kept), and
  ``poll_ms`` 0 when more are waiting. A cursor that is not a number is a ``400``.
- ``GET /feed`` with a WebSocket upgrade: the ``websocket`` protocol. The server
  first sends the last ``replay`` events (a relay replays recent history on connect,
  as the TikTok connectors do), then every new event as it comes, one envelope per
  message.

:class:`FeedLog` is the feed: a numbered, bounded log of encoded envelopes.
:func:`serve_http` is the HTTP/1.1 part, on h11: keep-alive, one request at a time,
a handler per request, and a WebSocket upgrade handed, with the bytes already read,
to trio-websocket. It is deliberately small: GET requests, no request bodies.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import orjson
import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

__all__ = [
    "FeedLog",
    "FeedServer",
    "HttpRequest",
    "HttpResponse",
    "serve_http",
]

MAX_HEAD_BYTES = 16_384
"""A request head larger than this closes the connection."""
IDLE_TIMEOUT_S = 60.0
"""A keep-alive connection idle for this long is closed."""


# --------------------------------------------------------------------------- the log


class FeedLog:
    """The last ``capacity`` events of a feed, numbered from 1 as they are appended.

    An event's number is its cursor: ``since(n)`` returns events ``n, n+1, ...``.
    Appending is synchronous and wakes every reader waiting in :meth:`wait_beyond`.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._events: deque[bytes] = deque(maxlen=capacity)
        self.first = 1
        """Number of the oldest event kept."""
        self.next = 1
        """Number the next appended event gets (one past the newest)."""
        self._changed = trio.Event()

    def append(self, payload: bytes) -> int:
        """Add one encoded envelope; return its number. Never checkpoints."""
        if len(self._events) == self._events.maxlen:
            self.first += 1
        self._events.append(payload)
        number = self.next
        self.next += 1
        self._changed.set()
        self._changed = trio.Event()
        return number

    def since(self, cursor: int | None, limit: int) -> tuple[list[bytes], int]:
        """At most ``limit`` events from number ``cursor`` on (the oldest kept if
        None or already forgotten), and the cursor that follows them."""
        start = self.first if cursor is None else min(max(cursor, self.first), self.next)
        offset = start - self.first
        events = list(itertools.islice(self._events, offset, offset + limit))
        return events, start + len(events)

    async def wait_beyond(self, cursor: int) -> None:
        """Return once an event numbered ``cursor`` or later exists."""
        while self.next <= cursor:
            await self._changed.wait()


# --------------------------------------------------------------------------- HTTP


@attrs.frozen
class HttpRequest:
    """One request as a handler sees it."""

    method: str
    path: str
    query: Mapping[str, str]
    """The first value of each query parameter."""
    headers: Mapping[str, str]
    """Lower-case names; the last value of a repeated header."""
    connection: int = 0
    """Number of the TCP connection it came on (from 1, per server): keep-alive shows."""


@attrs.frozen
class HttpResponse:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
WebSocketHandler = Callable[[HttpRequest, WebSocketConnection], Awaitable[None]]


class _Prefixed(trio.abc.Stream):
    """A stream whose first reads return bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _request(event: h11.Request, connection: int) -> HttpRequest:
    target = event.target.decode("latin-1")
    parts = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
    return HttpRequest(event.method.decode("latin-1"), parts.path, query, headers, connection)


def _wants_websocket(request: HttpRequest) -> bool:
    connection = request.headers.get("connection", "").lower()
    return "upgrade" in connection and request.headers.get("upgrade", "").lower() == "websocket"


async def serve_http(
    handler: HttpHandler,
    host: str,
    port: int,
    *,
    websocket: WebSocketHandler | None = None,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` (and ``websocket`` upgrades, if given) on ``host:port``
    until cancelled; reports started with the bound port. A keep-alive connection
    idle for ``idle_timeout_s`` is closed.

    A handler's exception answers 500 and is logged; it never reaches the listener.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    numbers = itertools.count(1)

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, handler, websocket, next(numbers), idle_timeout_s)
        except Exception as exc:
            logger.opt(exception=exc).debug("feed connection failed", event="feed_conn_error")
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, connection, listeners)
            task_status.started(bound)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


async def _serve_connection(
    stream: trio.SocketStream,
    handler: HttpHandler,
    websocket: WebSocketHandler | None,
    number: int,
    idle_timeout_s: float,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    received = bytearray()  # everything read before the first request: for an upgrade
    first = True
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            with trio.move_on_after(idle_timeout_s):
                data = await stream.receive_some(65_536)
                if first:
                    received += data
                conn.receive_data(data)
                continue
            return  # idle
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return
        if not isinstance(event, h11.Request):
            continue  # Data / EndOfMessage of a request already answered
        request = _request(event, number)
        if _wants_websocket(request):
            if websocket is None or not first:
                await _respond(stream, conn, HttpResponse(404, b'{"error":"not_found"}'))
                return
            await _upgrade(_Prefixed(stream, bytes(received)), request, websocket)
            return
        try:
            response = await handler(request)
        except Exception as exc:
            logger.opt(exception=exc).error(
                "feed handler failed on {path}", path=request.path, event="feed_error"
            )
            response = HttpResponse(500, b'{"error":"internal"}')
        while conn.their_state is h11.SEND_BODY:  # GET: no body, but drain it
            nxt = conn.next_event()
            if nxt is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65_536))
            elif isinstance(nxt, h11.EndOfMessage | h11.ConnectionClosed):
                break
        await _respond(stream, conn, response)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()
        first = False


async def _respond(stream: trio.abc.Stream, conn: h11.Connection, response: HttpResponse) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        *response.headers,
    ]
    try:
        reason = HTTPStatus(response.status).phrase.encode()
    except ValueError:
        reason = b""
    data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    data += conn.send(h11.Data(data=response.body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _upgrade(
    stream: trio.abc.Stream, request: HttpRequest, websocket: WebSocketHandler
) -> None:
    async with trio.open_nursery() as ws_tasks:
        ws_request = await wrap_server_stream(ws_tasks, stream)
        ws = await ws_request.accept()
        try:
            await websocket(request, ws)
        except ConnectionClosed:
            pass
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            ws_tasks.cancel_scope.cancel()


# --------------------------------------------------------------------------- feed


class FeedServer:
    """Serves a :class:`FeedLog` over ``/poll`` and ``/feed`` on one port."""

    def __init__(
        self,
        log: FeedLog,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_ms: int = 500,
        page: int = 500,
        replay: int = 50,
    ) -> None:
        """``poll_ms``: the interval polls are told to keep; ``page``: most events per
        poll answer; ``replay``: events sent first on each WebSocket connect."""
        self.log = log
        self.host = host
        self.port = port
        """The bound port once :meth:`run` reports started."""
        self.poll_ms = poll_ms
        self.page = page
        self.replay = replay
        self.polls = 0
        """Poll requests answered."""
        self.connects = 0
        """WebSocket connections accepted."""

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports started with the bound port."""
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(
                partial(
                    serve_http,
                    self.handle_http,
                    self.host,
                    self.port,
                    websocket=self.handle_websocket,
                )
            )
            task_status.started(self.port)

    async def handle_http(self, request: HttpRequest) -> HttpResponse:
        """``GET /poll``; anything else is 404 (405 for another method on /poll)."""
        if request.path != "/poll":
            return HttpResponse(404, b'{"error":"not_found"}')
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b'{"error":"method_not_allowed"}')
        raw = request.query.get("cursor", "")
        if raw and not raw.isdigit():
            return HttpResponse(400, orjson.dumps({"error": "bad cursor", "cursor": raw}))
        self.polls += 1
        events, cursor = self.log.since(int(raw) if raw else None, self.page)
        more = cursor < self.log.next
        body = b"".join(
            [
                b'{"events":[',
                b",".join(events),
                b'],"cursor":"',
                str(cursor).encode(),
                b'","poll_ms":',
                b"0" if more else str(self.poll_ms).encode(),
                b"}",
            ]
        )
        return HttpResponse(200, body)

    async def handle_websocket(self, request: HttpRequest, ws: WebSocketConnection) -> None:
        """``/feed``: the last ``replay`` events, then everything new, until closed."""
        if request.path != "/feed":
            await ws.aclose(code=1008, reason="no such feed")
            return
        self.connects += 1
        log = self.log
        position = max(log.first, log.next - self.replay)
        while True:
            await log.wait_beyond(position)
            events, position = log.since(position, self.page)
            for payload in events:
                await ws.send_message(payload.decode())
