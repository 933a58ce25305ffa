"""The dashboard WebSocket server: listeners, handshakes, the set of live dashboards.

We accept TCP ourselves and hand each stream to trio-websocket with
``wrap_server_stream``, so that we hold the stream: a connection whose send was
interrupted can be closed at once (see :mod:`meksd.runtime.dashboard`), and no
exception from one connection can reach the listener (trio-websocket's own
``serve_websocket`` lets a handler's error take the whole server down).
"""

from __future__ import annotations

import itertools

import trio
from loguru import logger
from trio_websocket import WebSocketConnection, WebSocketRequest, wrap_server_stream

from meksd.config import ServerConfig, parse_listen
from meksd.runtime.dashboard import Dashboard
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub
from meksd.runtime.stats import DashboardTotals

HANDSHAKE_TIMEOUT_S = 10.0


class DashboardServer:
    """Serves ``ws://HOST:PORT/ws`` for every room in the hub."""

    def __init__(self, hub: Hub, config: ServerConfig) -> None:
        self.hub = hub
        self.config = config
        self.dashboards: set[Dashboard] = set()
        self.port = 0
        self.host = ""
        self.accepted = 0
        self.rejected = 0
        self.totals = DashboardTotals()
        self.latency: HistogramFamily | None = None
        self._ids = itertools.count(1)
        self._accept_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()

    async def run(
        self, *, task_status: trio.TaskStatus[DashboardServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started (listeners are up), serve until cancelled."""
        host, port = parse_listen(self.config.ws_listen)
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        self.host, self.port = sockname[0], sockname[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery

            async def accept(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                try:
                    with self._accept_scope:
                        await trio.serve_listeners(
                            self._handle,
                            listeners,
                            handler_nursery=nursery,
                            task_status=task_status,
                        )
                finally:
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)

            await nursery.start(accept)
            logger.info(
                "dashboards listening on ws://{host}:{port}/ws",
                host=self.host,
                port=self.port,
                event="listening",
            )
            task_status.started(self)

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, close every dashboard with 1001, wait up to ``grace_s``."""
        self._accept_scope.cancel()
        for dash in list(self.dashboards):
            dash.close(1001, "server shutting down")
        with trio.move_on_after(grace_s):
            await self._idle.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn_id = f"c{next(self._ids)}"
        log = logger.bind(conn=conn_id)
        try:
            async with trio.open_nursery() as ws_tasks:
                ws = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                    request = await wrap_server_stream(
                        ws_tasks, stream, max_message_size=self.config.max_message_bytes
                    )
                    ws = await self._accept(request)
                if ws is None:  # rejected, or the handshake timed out
                    ws_tasks.cancel_scope.cancel()
                    return
                dash = Dashboard(
                    ws,
                    stream,
                    self.hub,
                    self.config,
                    conn_id=conn_id,
                    totals=self.totals,
                    latency=self.latency,
                )
                self._add(dash)
                log.info("dashboard connected from {peer}", peer=_peer(stream), event="conn_open")
                try:
                    await dash.run()
                finally:
                    self._discard(dash)
                    log.info("dashboard disconnected", event="conn_close", sent=dash.messages_sent)
                ws_tasks.cancel_scope.cancel()
        except Exception as exc:  # one connection's failure is that connection's only
            log.opt(exception=exc).warning("dashboard connection failed", event="conn_error")
        finally:
            await trio.aclose_forcefully(stream)

    async def _accept(self, request: WebSocketRequest) -> WebSocketConnection | None:
        """Accept the handshake, or reject it with an HTTP status saying why."""
        if request.path.split("?", 1)[0] != "/ws":
            self.rejected += 1
            await request.reject(404, body=b"meksd: dashboards connect to /ws\n")
            return None
        if len(self.dashboards) >= self.config.max_connections:
            self.rejected += 1
            await request.reject(503, body=b"meksd: too many connections\n")
            return None
        return await request.accept()

    def _add(self, dash: Dashboard) -> None:
        self.dashboards.add(dash)
        self.accepted += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _discard(self, dash: Dashboard) -> None:
        self.dashboards.discard(dash)
        if not self.dashboards:
            self._idle.set()


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{addr[0]}:{addr[1]}"
