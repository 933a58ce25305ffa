"""The dashboard WebSocket server: listeners, handshakes, the set of live dashboards.

We accept TCP ourselves and hand each stream to trio-websocket with
``wrap_server_stream``, so that we hold the stream: a connection whose send was
interrupted can be closed at once (see :mod:`meksd.runtime.dashboard`), and no
exception from one connection can reach the listener (trio-websocket's own
``serve_websocket`` lets a handler's error take the whole server down).

The handshake is where access control starts (``docs/security.md``): it must complete
within ``handshake_timeout_s``, and :func:`meksd.core.access.admit` decides on it
(path, capacity, connections per client address, ``Origin``, token) before anything
is allocated for a dashboard. A refusal is an HTTP status with a body saying why.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from typing import Any

import trio
from loguru import logger
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from meksd.access_config import AuthConfig, access_policy
from meksd.config import ServerConfig, parse_listen
from meksd.core.access import Admit, Handshake, Refuse, admit
from meksd.runtime.access import Access, grant_survives, handshake_of
from meksd.runtime.commands import CommandRouter
from meksd.runtime.dashboard import Dashboard
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub
from meksd.runtime.ratelimit import LogLimiter
from meksd.runtime.stats import DashboardTotals
from meksd.runtime.tcpstream import FrameGuardStream


class DashboardServer:
    """Serves ``ws://HOST:PORT/ws`` for every room in the hub."""

    def __init__(self, hub: Hub, config: ServerConfig, auth: AuthConfig | None = None) -> None:
        self.hub = hub
        self.config = config
        self._listen_host = parse_listen(config.ws_listen)[0]
        self.access = Access.from_config(
            auth or AuthConfig(), listen_host=self._listen_host, room_load=self.room_load
        )
        """The access policy in force, shared with every dashboard (see :meth:`set_auth`)."""
        self.dashboards: set[Dashboard] = set()
        self.port = 0
        self.host = ""
        self.accepted = 0
        self.rejected = 0
        self.totals = DashboardTotals()
        self.latency: HistogramFamily | None = None
        self.commands: CommandRouter | None = None
        self._ids = itertools.count(1)
        self._per_address: Counter[str] = Counter()
        self._log_limiter = LogLimiter(interval_s=10.0)
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

    def room_load(self, room: str) -> int:
        """Subscriptions to ``room`` now, over every dashboard."""
        return sum(1 for dash in self.dashboards if room in dash.subscriptions)

    def set_auth(self, auth: AuthConfig) -> None:
        """Apply a reloaded ``[auth]``.

        New handshakes and ``hello`` use it at once. Dashboards whose token it no
        longer has, or has with another role or rooms, are closed with 1008 (they
        reconnect with a valid token); so are open-mode dashboards once tokens exist.
        """
        old = self.access.policy
        self.access.policy = access_policy(auth, listen_host=self._listen_host)
        self.access.auth_timeout_s = auth.auth_timeout_s
        if self.access.policy.mode == "closed":
            logger.error(
                "no dashboard token configured on the non-loopback listener {host}: "
                "every dashboard is refused until tokens are added",
                host=self._listen_host,
                event="auth_closed",
            )
        for dash in list(self.dashboards):
            if dash.grant is not None and not grant_survives(dash.grant, old, self.access.policy):
                dash.revoke("token revoked or changed by a configuration reload")

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn_id = f"c{next(self._ids)}"
        log = logger.bind(conn=conn_id)
        address = _peer_address(stream)
        others = self._per_address[address]
        self._per_address[address] = others + 1
        guarded = FrameGuardStream(stream)
        opened = False
        try:
            async with trio.open_nursery() as ws_tasks:
                accepted: tuple[WebSocketConnection, Admit] | None = None
                with trio.move_on_after(self.config.handshake_timeout_s) as handshake:
                    guarded.on_close = handshake.cancel  # a 400 was sent, or the client left
                    request = await wrap_server_stream(
                        ws_tasks, guarded, max_message_size=self.config.max_message_bytes
                    )
                    guarded.on_close = None
                    accepted = await self._accept(request, others, address, log)
                guarded.on_close = None
                if handshake.cancelled_caught:
                    if guarded.closed:  # trio-websocket could not parse it and sent 400
                        self._refused("bad_handshake", address, 400, log)
                    elif trio.current_time() < handshake.deadline:
                        self._refused("abandoned", address, 0, log)  # the client left
                    else:
                        self._refused("handshake_timeout", address, 0, log)
                if accepted is None:  # refused, or the handshake timed out
                    ws_tasks.cancel_scope.cancel()
                    return
                ws, verdict = accepted
                opened = True
                dash = Dashboard(
                    ws,
                    guarded,
                    self.hub,
                    self.config,
                    conn_id=conn_id,
                    totals=self.totals,
                    latency=self.latency,
                    commands=self.commands,
                    grant=verdict.grant,
                    access=self.access,
                )
                self._add(dash)
                log.info(
                    "dashboard connected from {peer}",
                    peer=_peer(stream),
                    token=verdict.grant.name if verdict.grant is not None else None,
                    event="conn_open",
                )
                try:
                    await dash.run()
                finally:
                    self._discard(dash)
                    log.info("dashboard disconnected", event="conn_close", sent=dash.messages_sent)
                ws_tasks.cancel_scope.cancel()
        except Exception as exc:  # one connection's failure is that connection's only
            if not opened:  # hostile bytes trio-websocket could not parse, or the client left
                gone = _is_disconnect(exc)
                self._refused("abandoned" if gone else "bad_handshake", address, 400, log)
            else:
                self.totals.errors += 1
                if self._log_limiter.allow("conn_error", trio.current_time()):
                    log.opt(exception=exc).warning(
                        "dashboard connection failed", event="conn_error"
                    )
        finally:
            try:
                await trio.aclose_forcefully(stream)
            finally:  # last: once it is counted out, this handler holds nothing
                remaining = self._per_address[address] - 1
                if remaining > 0:
                    self._per_address[address] = remaining
                else:
                    del self._per_address[address]

    async def _accept(
        self, request: WebSocketRequest, others: int, address: str, log: Any
    ) -> tuple[WebSocketConnection, Admit] | None:
        """Accept the handshake, or reject it with an HTTP status saying why.

        ``others`` counts the other connections from the client's ``address``.
        """
        hs: Handshake = handshake_of(request)
        verdict = admit(
            self.access.policy,
            hs,
            connections=len(self.dashboards),
            max_connections=self.config.max_connections,
            from_address=others,
            max_per_address=self.config.max_connections_per_address,
        )
        if isinstance(verdict, Refuse):
            self.rejected += 1
            self._refused(verdict.reason, address, verdict.status, log)
            with contextlib.suppress(*_DISCONNECTS):  # it left before reading the answer
                await request.reject(verdict.status, body=f"{verdict.message}\n".encode())
            return None
        return await request.accept(), verdict

    def _refused(self, reason: str, address: str, status: int, log: Any) -> None:
        """Count a refused handshake; log it at most once per reason per 10 s.

        Never logs the request path or headers: they may carry a token.
        """
        self.totals.refused[reason] += 1
        if self._log_limiter.allow(f"refused:{reason}", trio.current_time()):
            log.info(
                "dashboard refused: {reason}",
                reason=reason,
                status=status,
                peer=address,
                event="conn_refused",
            )

    def _add(self, dash: Dashboard) -> None:
        self.dashboards.add(dash)
        self.accepted += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _discard(self, dash: Dashboard) -> None:
        self.dashboards.discard(dash)
        if not self.dashboards:
            self._idle.set()


_DISCONNECTS = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


def _is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) only says the client went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(inner) for inner in exc.exceptions)
    return isinstance(exc, _DISCONNECTS)


def _peer_address(stream: trio.SocketStream) -> str:
    """The client's IP address: what ``max_connections_per_address`` counts by."""
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError):
        return "?"


def _peer(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
    return f"{addr[0]}:{addr[1]}"
