"""The dashboard WebSocket server: listeners, handshakes, the set of live dashboards.

Listening sockets are plain non-blocking stdlib sockets, accepted with
``trio.lowlevel.wait_readable``; each connection is a
:class:`~meksd.runtime.wsconn.WsConnection` (wsproto for the handshake and parsing,
meksd for the bytes out — see that module for why). Every handler catches its own
failures: nothing one connection does can reach the listener or another connection.

The handshake is where access control starts (``docs/security.md``): it must complete
within ``handshake_timeout_s``, and :func:`meksd.core.access.admit` decides on it
(path, capacity, connections per client address, ``Origin``, token) before anything
is allocated for a dashboard. A refusal is an HTTP status with a body saying why.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections import Counter
from typing import Any

import trio
from loguru import logger

from meksd.access_config import AuthConfig, access_policy
from meksd.config import ServerConfig, parse_listen
from meksd.core.access import Handshake, Refuse, admit
from meksd.core.protocol import choose_subprotocol
from meksd.runtime.access import Access, grant_survives
from meksd.runtime.commands import CommandRouter
from meksd.runtime.dashboard import Dashboard
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub
from meksd.runtime.ratelimit import LogLimiter
from meksd.runtime.stats import DashboardTotals
from meksd.runtime.wsconn import ConnectionGone, WsConnection

LISTEN_BACKLOG = 1024


def open_listen_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking TCP sockets for ``host:port`` (every address family)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            if port == 0:  # one port for every family: the first one the kernel gave
                port = sock.getsockname()[1]
                break
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


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
        self.by_conn: dict[str, Dashboard] = {}
        """Open dashboards by connection id (where a ``reply_result`` goes)."""
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
        listeners = open_listen_sockets(host, port)
        sockname = listeners[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            logger.info(
                "dashboards listening on ws://{host}:{port}/ws",
                host=self.host,
                port=self.port,
                event="listening",
            )
            task_status.started(self)

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        try:
            with self._accept_scope:
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    while True:
                        try:
                            sock, _ = listener.accept()
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            if exc.errno in (
                                errno.EMFILE,
                                errno.ENFILE,
                                errno.ENOBUFS,
                                errno.ENOMEM,
                            ):
                                logger.error(
                                    "cannot accept dashboards: {err}",
                                    err=exc.strerror,
                                    event="accept_error",
                                )
                                await trio.sleep(0.1)
                            break
                        nursery.start_soon(self._handle, sock)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()

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

    async def _handle(self, sock: socket.socket) -> None:
        conn_id = f"c{next(self._ids)}"
        log = logger.bind(conn=conn_id)
        conn = WsConnection(
            sock,
            max_message_bytes=self.config.max_message_bytes,
            send_timeout_s=self.config.send_timeout_s,
        )
        address = conn.peer_host
        others = self._per_address[address]
        self._per_address[address] = others + 1
        opened = False
        try:
            verdict = None
            with trio.move_on_after(self.config.handshake_timeout_s) as handshake:
                try:
                    request = await conn.read_request()
                except ConnectionGone as exc:
                    gone = conn.dead or str(exc).startswith("closed")
                    self._refused("abandoned" if gone else "bad_handshake", address, 400, log)
                    if not gone:
                        conn.reject_nowait(400, b"meksd: not a WebSocket handshake\n")
                        await self._flush_refusal(conn)
                    return
                verdict = self._admit(conn, request, others, address, log)
            if handshake.cancelled_caught:
                self._refused("handshake_timeout", address, 0, log)
                return
            if verdict is None:
                await self._flush_refusal(conn)
                return
            opened = True
            dash = Dashboard(
                conn,
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
                peer=conn.peer,
                token=verdict.grant.name if verdict.grant is not None else None,
                event="conn_open",
            )
            try:
                await dash.run()
            finally:
                self._discard(dash)
                log.info("dashboard disconnected", event="conn_close", sent=dash.messages_sent)
        except Exception as exc:  # one connection's failure is that connection's only
            if not opened:
                self._refused("bad_handshake", address, 400, log)
            else:
                self.totals.errors += 1
                if self._log_limiter.allow("conn_error", trio.current_time()):
                    log.opt(exception=exc).warning(
                        "dashboard connection failed", event="conn_error"
                    )
        finally:
            conn.kill("done")
            remaining = self._per_address[address] - 1
            if remaining > 0:
                self._per_address[address] = remaining
            else:
                del self._per_address[address]

    def _admit(self, conn: WsConnection, request: Any, others: int, address: str, log: Any) -> Any:
        """Accept the handshake, or queue an HTTP refusal saying why (returns None).

        ``others`` counts the other connections from the client's ``address``.
        """
        origin: str | None = None
        authorization: str | None = None
        for name, value in request.extra_headers:
            name = name.lower()
            if name == b"origin" and origin is None:
                origin = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        hs = Handshake(target=request.target, origin=origin, authorization=authorization)
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
            conn.reject_nowait(verdict.status, f"{verdict.message}\n".encode())
            return None
        # The first subprotocol the client offers that we speak (docs/protocol.md).
        conn.accept_nowait(subprotocol=choose_subprotocol(request.subprotocols))
        return verdict

    async def _flush_refusal(self, conn: WsConnection) -> None:
        """Give a refusal a moment to reach the client before the socket closes."""
        with trio.move_on_after(1.0):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run_writer)
                await conn.wait_drained()
                nursery.cancel_scope.cancel()

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

    def notify(self, conn_id: str, message: dict[str, object]) -> bool:
        """Send ``message`` to the connection ``conn_id`` if it is still here. Synchronous."""
        dash = self.by_conn.get(conn_id)
        if dash is None or dash.conn.dead:
            return False
        dash.send_message(message)
        return True

    def _add(self, dash: Dashboard) -> None:
        self.by_conn[dash.conn_id] = dash
        self.dashboards.add(dash)
        self.accepted += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _discard(self, dash: Dashboard) -> None:
        self.by_conn.pop(dash.conn_id, None)
        self.dashboards.discard(dash)
        if not self.dashboards:
            self._idle.set()
