"""The admin HTTP server: health, readiness, metrics and a read-only room API.

Served in-process by hypercorn's trio worker (a Starlette app); it binds to
``[server] http_listen`` (loopback by default: nothing here is meant for the open
network)::

    GET /healthz          200 {"status": "ok"}: the process is alive and serving
    GET /readyz           200 when every room is ready, else 503; per room
                          {"room", "ready", "reason"} (see meksd.runtime.health)
    GET /metrics          Prometheus text exposition (docs/metrics.md)
    GET /api/rooms        every room: epoch, seq, live, viewers, totals, dashboards,
                          readiness, ingest depth, sources
    GET /api/rooms/{id}   the room's snapshot message, the very bytes a dashboard
                          subscribing now would receive; 404 for an unknown room
    GET /  /config.json   the dashboard page and where it connects, and
    GET /api/rooms/{id}/previous   the session a reset ended (meksd.runtime.webpage)

Every answer is JSON (except ``/metrics`` and the page), errors included: an unknown path is a
404 ``{"error": "not_found", ...}``, a wrong method a 405, and an exception in a
handler a 500 ``{"error": "internal"}`` logged once here, never a traceback sent to
the client and never a crash of the server.

Lifecycle as everywhere in meksd: :meth:`AdminServer.run` reports started once the
listener is bound (so ``.port`` is the real port even when configured as 0), runs
until :meth:`AdminServer.stop` or cancellation. ``stop`` is graceful: hypercorn
stops accepting and gives requests in flight ``shutdown_grace_s`` to finish.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meksd.config import parse_listen
from meksd.core.wire import totals_to_wire
from meksd.runtime.health import room_readiness
from meksd.runtime.metrics import Metrics
from meksd.runtime.webpage import page_routes

if TYPE_CHECKING:
    from hypercorn.typing import Framework

    from meksd.runtime.app import App
    from meksd.runtime.room import Room

__all__ = ["AdminServer"]

JSON = "application/json"


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


class AdminServer:
    """Serves the admin HTTP endpoints of one :class:`~meksd.runtime.app.App`."""

    def __init__(
        self,
        app: App,
        *,
        listen: str,
        metrics: Metrics | None = None,
        stall_s: float | None = None,
        grace_s: float | None = None,
    ) -> None:
        """``listen`` is ``HOST:PORT`` or ``[IPv6]:PORT`` (port 0: any free port).

        ``metrics`` defaults to a new :class:`Metrics` for ``app`` (the app should
        pass its own, so that the histograms it observes are the ones exposed).
        ``stall_s`` defaults to :data:`meksd.runtime.health.STALL_S`; ``grace_s``
        to the app's ``shutdown_grace_s``.
        """
        self.app = app
        self.host, self._requested_port = parse_listen(listen)
        self.port = 0
        """The bound port, set before :meth:`run` reports started."""
        self.metrics = metrics if metrics is not None else Metrics(app)
        self.stall_s = stall_s
        self.grace_s = app.config.server.shutdown_grace_s if grace_s is None else grace_s
        self.asgi: ASGIApp = _Guard(self._starlette())
        self._stop = trio.Event()
        self._running = False
        self._stopped = trio.Event()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the listener (valid once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # --- lifecycle --------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[AdminServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started (the listener is up), serve until stopped or cancelled."""
        if self._running:
            raise RuntimeError("AdminServer.run is already running")
        self._running = True
        config = HypercornConfig()
        config.accesslog = None
        config.errorlog = None
        config.logger_class = _LoguruLog
        config.graceful_timeout = self.grace_s
        config.include_server_header = False
        try:
            # Bind here, not inside hypercorn: a taken port is then a plain OSError
            # from run() (not one nested in hypercorn's exception groups), and the
            # real port is known even when 0 was asked for.
            sock = await _bind(self.host, self._requested_port, config.backlog)
            try:
                self.port = sock.getsockname()[1]
                sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
                async with trio.open_nursery() as nursery:
                    await nursery.start(_serve, self.asgi, config, sockets, self._stop.wait)
                    logger.info("admin HTTP listening on {url}", url=self.url, event="listening")
                    task_status.started(self)
            finally:
                sock.close()  # idempotent: hypercorn closes it too
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop accepting and finish requests in flight (up to ``grace_s``); returns
        once :meth:`run` has returned. Does nothing if the server is not running."""
        self._stop.set()
        if self._running:
            await self._stopped.wait()

    # --- the ASGI app -----------------------------------------------------------

    def _starlette(self) -> Starlette:
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/api/rooms", self._rooms, methods=["GET"]),
            Route("/api/rooms/{room_id}", self._room, methods=["GET"]),
            *page_routes(self.app),  # the dashboard page: meksd.runtime.webpage
        ]
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        )

    async def _healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        now = trio.current_time()
        rooms = [
            room_readiness(room, now, stall_s=self.stall_s).to_json()
            for room in self._rooms_sorted()
        ]
        ready = all(r["ready"] for r in rooms)
        body = {"status": "ready" if ready else "not_ready", "rooms": rooms}
        return _json(body, 200 if ready else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def _rooms(self, request: Request) -> Response:
        now = trio.current_time()
        dashboards: Counter[str] = Counter()
        for dash in self.app.dashboards.dashboards:
            dashboards.update(dash.subscriptions.keys())
        return _json(
            [room_summary(room, now, dashboards, self.stall_s) for room in self._rooms_sorted()]
        )

    async def _room(self, request: Request) -> Response:
        room_id = request.path_params["room_id"]
        room = self.app.rooms.get(room_id)
        if room is None:
            return _json({"error": "unknown_room", "message": f"no room {room_id!r}"}, 404)
        seq, body = room.feed.snapshot()
        return Response(body, media_type=JSON, headers={"x-meksd-seq": str(seq)})

    def _rooms_sorted(self) -> list[Room]:
        return [self.app.rooms[rid] for rid in sorted(self.app.rooms)]


def room_summary(
    room: Room, now: float, dashboards: Counter[str], stall_s: float | None = None
) -> dict[str, Any]:
    """One room as ``/api/rooms`` lists it. Synchronous; reads published state only."""
    feed = room.feed
    state = feed.state
    readiness = room_readiness(room, now, stall_s=stall_s)
    sources = []
    active = room.selector.active
    for index, source in enumerate(room.sources):
        s = source.statistics()
        sources.append(
            {
                "name": s.name,
                "active": index == active,
                "state": s.state,
                "records": s.records,
                "connects": s.connects,
                "failures": s.failures,
                "last_error": s.last_error,
                "last_record_age_s": (
                    None if s.last_record_at is None else round(now - s.last_record_at, 3)
                ),
            }
        )
    return {
        "id": room.room_id,
        "epoch": feed.epoch,
        "seq": feed.seq,
        "live": state.live,
        "viewers": state.viewers,
        "totals": totals_to_wire(state.totals),
        "dashboards": dashboards.get(room.room_id, 0),
        "ready": readiness.ready,
        "reason": readiness.reason,
        "ingest_depth": room.ingest_depth(),
        "failovers": room.counters.failovers,
        "sources": sources,
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = _json({"error": code, "message": exc.detail}, exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after sending this; _Guard logs it and swallows it.
    return _json({"error": "internal", "message": "internal error; see the server log"}, 500)


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer hypercorn's lifespan protocol; there is nothing to start or stop.

    Not left to Starlette: when the server is cancelled, Starlette reports the
    ``Cancelled`` it receives as ``lifespan.shutdown.failed``, which hypercorn turns
    into a ``LifespanFailureError`` that would replace the cancellation.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Guard:
    """Outermost ASGI layer: no exception leaves the app (logged, answered 500), and
    the lifespan protocol is answered here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            logger.opt(exception=exc).error(
                "admin HTTP handler failed on {path}",
                path=scope.get("path", "?"),
                event="admin_error",
            )
            if scope["type"] == "http" and not started:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", JSON.encode())],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"internal"}'})


async def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening, non-blocking TCP socket on the first address ``host`` resolves to."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve(
    asgi: ASGIApp,
    config: HypercornConfig,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker on sockets we bound; reports started once it accepts.

    ``worker_serve`` is what ``hypercorn.trio.serve`` calls, minus the binding:
    hypercorn's own multi-worker runner uses it the same way, with pre-bound sockets.
    """
    # Starlette's and hypercorn's ASGI type aliases differ in precision only.
    framework = cast("Framework", asgi)
    await worker_serve(
        wrap_app(framework, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


class _LoguruLog(HypercornLogger):
    """hypercorn's log, sent to meksd's loguru sink (JSON lines) instead of stdlib
    logging. No access log: scrapes every few seconds would drown everything else."""

    def __init__(self, config: HypercornConfig) -> None:
        self.access_logger = None
        self.error_logger = None

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        return None

    async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("CRITICAL", message, args)

    async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("ERROR", message, args)

    async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("WARNING", message, args)

    async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("DEBUG", message, args)  # "Running on ...": we log our own line

    async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("DEBUG", message, args)

    async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("ERROR", message, args, exception=True)

    async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
        _hlog("DEBUG", message, args)


def _hlog(level: str, message: str, args: tuple[Any, ...], *, exception: bool = False) -> None:
    try:
        text = message % args if args else message
    except (TypeError, ValueError):
        text = f"{message} {args!r}"
    logger.opt(exception=exception).log(level, "hypercorn: {text}", text=text, event="admin_http")
