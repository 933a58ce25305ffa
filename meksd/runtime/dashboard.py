"""One dashboard connection: a reader task, a writer task per subscribed room, a heartbeat.

Every send goes through :meth:`Dashboard.send`, which is shielded from outside
cancellation and bounded by ``send_timeout_s``. trio's ``send_all`` may have written
part of a frame when it is interrupted, so a send that fails or times out *kills* the
connection: a close frame (1013) is sent only if no byte of any cut frame went out
(:class:`~meksd.runtime.tcpstream.FrameGuardStream` knows), then the socket is reset,
freeing its buffers. The client reconnects and resumes with ``since``. Unsubscribing
or shutting down cancels a writer only at its waits, never in the middle of a frame.

The reader is the gate for what a client sends (``docs/security.md``): the message
rate (``rate_limited``; sustained, 1008), authentication (before a valid token only
``hello`` and ``ping`` are answered; none within ``auth_timeout_s``: 1008) and room
scope (``forbidden``). :attr:`Dashboard.role`, :attr:`Dashboard.rooms` and
:meth:`Dashboard.can_command` say what the connection may do.

Writers never get a channel of their own: each keeps a cursor into the room's
:class:`~meksd.runtime.hub.RoomFeed` ring and sends everything after it in one
message. A cursor that fell off the ring gets ``lagged`` then a snapshot.
"""

from __future__ import annotations

import contextlib
import math

import orjson
import trio
from loguru import logger
from trio_websocket import ConnectionClosed, WebSocketConnection

from meksd import __version__
from meksd.config import ServerConfig
from meksd.core.access import OPEN_GRANT, Grant, Role, authenticate
from meksd.core.limits import RateLimit, new_gate, pass_message
from meksd.core.protocol import from_wire
from meksd.model.commands import CommandResult
from meksd.model.wire import Command, Hello, Ping, ProtocolError, Since, Subscribe, Unsubscribe
from meksd.runtime.access import Access
from meksd.runtime.commands import CommandRouter, ack_message, answer_command
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub, RoomFeed
from meksd.runtime.stats import DashboardTotals
from meksd.runtime.tcpstream import FrameGuardStream

PROTOCOL = "meks.v1"
MAX_DELTAS_PER_MESSAGE = 256
CLOSE_TIMEOUT_S = 2.0


class Dashboard:
    """Serves one accepted WebSocket until the client leaves or the server closes it."""

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        hub: Hub,
        config: ServerConfig,
        *,
        conn_id: str,
        totals: DashboardTotals,
        latency: HistogramFamily | None = None,
        commands: CommandRouter | None = None,
        grant: Grant | None = OPEN_GRANT,
        access: Access | None = None,
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.hub = hub
        self.config = config
        self.conn_id = conn_id
        self.totals = totals
        self.latency = latency
        self.commands = commands
        self.grant = grant
        """What this connection may do; ``None`` until it presents a valid token."""
        self.access = access
        self._rate = RateLimit(config.max_messages_per_s, config.message_burst)
        self._gate = new_gate(self._rate, trio.current_time())
        self._auth_scope = trio.CancelScope()
        self._kill_close: tuple[int, str] | None = None
        self._reset = False
        self.subscriptions: dict[str, trio.CancelScope] = {}
        self.messages_sent = 0
        self.bytes_sent = 0
        self.lagged = 0
        self.snapshots = 0
        self._scope = trio.CancelScope()
        self._close_code = 1000
        self._close_reason = ""
        self._dead = False
        self._log = logger.bind(conn=conn_id)

    # --- access -----------------------------------------------------------------

    @property
    def role(self) -> Role | None:
        """``viewer`` or ``operator``; ``None`` before the connection authenticated."""
        return self.grant.role if self.grant is not None else None

    @property
    def rooms(self) -> frozenset[str] | None:
        """Rooms this connection may read (and command, as operator); ``None``: all."""
        return self.grant.rooms if self.grant is not None else frozenset()

    def can_read(self, room: str) -> bool:
        return self.grant is not None and self.grant.can_read(room)

    def can_command(self, room: str) -> bool:
        return self.grant is not None and self.grant.can_command(room)

    def revoke(self, why: str) -> None:
        """Close with 1008: the token this connection used was removed or changed."""
        self._limited("revoked")
        self.close(1008, why)

    def _limited(self, limit: str) -> None:
        self.totals.limited[limit] += 1

    def _welcome(self) -> dict[str, object]:
        return {
            "type": "welcome",
            "protocol": PROTOCOL,
            "server": f"meksd/{__version__}",
            "conn": self.conn_id,
            "rooms": self.grant.visible(self.hub.room_ids()) if self.grant is not None else [],
            "heartbeat_s": self.config.heartbeat_s,
            "role": self.role,
        }

    async def _auth_deadline(self) -> None:
        """Close (1008) a connection that presents no valid token in time."""
        timeout = self.access.auth_timeout_s if self.access is not None else 10.0
        with self._auth_scope:
            await trio.sleep(timeout)
            self._limited("auth_timeout")
            await self.send_error("unauthorized", f"no valid token within {timeout:g}s")
            self.close(1008, "authentication timeout")

    # --- lifecycle --------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns once it is closed one way or the other."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._heartbeat)
                    if self.grant is None:
                        nursery.start_soon(self._auth_deadline)
                    await self.send_json(self._welcome())
                    await self._read()
                    nursery.cancel_scope.cancel()
        finally:
            await self._finish()

    def close(self, code: int, reason: str) -> None:
        """Ask for a graceful close (used by shutdown: 1001). Synchronous."""
        if not self._dead:
            self._close_code = code
            self._close_reason = reason
        self._scope.cancel()

    def kill(self, why: str, close: tuple[int, str] | None = None) -> None:
        """Drop the connection at once: its stream can no longer be trusted.

        With ``close``, a close frame with that code and reason is attempted first,
        if the stream is still at a frame boundary (no cut frame went out). Then the
        socket is reset, so that the kernel frees what the client did not read.
        """
        if not self._dead:
            self._dead = True
            self._reset = True
            self._kill_close = close
            self.totals.killed += 1
            self._log.info("dashboard connection killed: {why}", why=why, event="conn_killed")
        self._scope.cancel()

    async def _finish(self) -> None:
        with trio.CancelScope(shield=True):
            stream = self.stream
            intact = isinstance(stream, FrameGuardStream) and not stream.torn
            if self._dead and self._kill_close is not None and intact:
                code, reason = self._kill_close
            elif not self._dead:
                code, reason = self._close_code, self._close_reason
            else:
                code, reason = 0, ""
            if code and self.ws.closed is None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    with contextlib.suppress(Exception):  # closing a broken peer
                        await self.ws.aclose(code, reason or None)
            if self._reset and isinstance(stream, FrameGuardStream):
                await stream.abort()  # reset: free what the client never read
            else:
                await trio.aclose_forcefully(stream)

    # --- sending ----------------------------------------------------------------

    async def send(self, body: bytes) -> None:
        """Send one text message. Never torn: a failure kills the connection.

        Shielded so that unsubscribe or shutdown cannot interrupt a frame; bounded by
        ``send_timeout_s``. If the send fails, the connection is killed and this
        raises ``trio.Cancelled`` at the checkpoint that follows.
        """
        if not self._dead:
            try:
                with trio.CancelScope(shield=True), trio.fail_after(self.config.send_timeout_s):
                    await self.ws.send_message(body.decode())
            except trio.TooSlowError:
                timeout = self.config.send_timeout_s
                self._limited("send_timeout")
                self.kill(
                    f"send took longer than {timeout:g}s",
                    close=(1013, f"send timeout: the dashboard did not read for {timeout:g}s"),
                )
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                self.kill("peer went away during send")
            else:
                self.messages_sent += 1
                self.bytes_sent += len(body)
                self.totals.messages_sent += 1
                self.totals.bytes_sent += len(body)
        await trio.lowlevel.checkpoint()

    async def send_json(self, message: dict[str, object]) -> None:
        await self.send(orjson.dumps(message))

    async def send_error(self, code: str, message: str, **extra: object) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    # --- reading ----------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                data = await self.ws.get_message()
            except ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else None
                if code == 1009:
                    self._limited("message_too_big")
                elif code in (1002, 1007):  # broken framing, invalid UTF-8 in a text frame
                    self._limited("protocol_error")
                return
            self._gate, verdict = pass_message(self._gate, self._rate, trio.current_time())
            if verdict != "ok":
                self._limited("rate_limited" if verdict == "limited" else "rate_abuse")
                await self.send_error(
                    "rate_limited",
                    f"message dropped: at most {self._rate.rate:g} messages per second "
                    f"(bursts of {self._rate.burst})",
                )
                if verdict == "abuse":
                    self.close(1008, "rate limit exceeded")
                    return
                continue
            if isinstance(data, bytes):
                await self.send_error("bad_request", "expected a text message, got binary")
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                await self.send_error("bad_json", f"message is not JSON: {exc}"[:200])
                continue
            msg = from_wire(obj)
            if self.grant is None and not isinstance(msg, Hello | Ping | ProtocolError):
                self._limited("unauthorized")
                await self.send_error(
                    "unauthorized", 'authenticate first: {"type": "hello", "token": ...}'
                )
            elif isinstance(msg, Command) and not self.can_read(msg.room):
                self._limited("forbidden")
                refusal = CommandResult(
                    False, "forbidden", f"room {msg.room!r} is outside this token's rooms"
                )
                await self.send_json(ack_message(msg.id, refusal))
            else:
                await self._dispatch(msg)

    async def _hello(self, msg: Hello) -> None:
        """Authenticate with ``hello``'s token (token mode), answer with ``welcome``."""
        policy = self.access.policy if self.access is not None else None
        if msg.token is not None and policy is not None and policy.mode == "token":
            grant = authenticate(msg.token, policy.tokens)
            if grant is None:
                self._limited("bad_token")
                await self.send_error("unauthorized", "invalid token")
                self.close(1008, "invalid token")
                return
            if self.grant is not None and grant != self.grant:
                await self.send_error(
                    "bad_request",
                    f"already authenticated as {self.grant.name!r}; "
                    "open a new connection to use another token",
                )
                return
            if self.grant is None:
                self._log.info(
                    "dashboard authenticated", token=grant.name, role=grant.role, event="conn_auth"
                )
            self.grant = grant
            self._auth_scope.cancel()
        elif self.grant is None:
            await self.send_error("unauthorized", "hello needs a token on this server")
            return
        await self.send_json(self._welcome())

    async def _dispatch(self, msg: object) -> None:
        if isinstance(msg, ProtocolError):
            await self.send_error(msg.code, msg.message)
        elif isinstance(msg, Ping):
            pong: dict[str, object] = {"type": "pong"}
            if msg.id is not None:
                pong["id"] = msg.id
            await self.send_json(pong)
        elif isinstance(msg, Hello):
            await self._hello(msg)
        elif isinstance(msg, Subscribe):
            await self._subscribe(msg)
        elif isinstance(msg, Unsubscribe):
            scope = self.subscriptions.pop(msg.room, None)
            if scope is not None:
                scope.cancel()
        elif isinstance(msg, Command):
            # The reader let it through: authenticated, room in scope. Viewers: forbidden.
            ack = await answer_command(
                msg,
                role=self.role or "viewer",
                known_room=self.hub.get(msg.room) is not None,
                router=self.commands,
                conn_id=self.conn_id,
            )
            await self.send_json(ack)

    async def _subscribe(self, msg: Subscribe) -> None:
        if not self.can_read(msg.room):  # checked first: no hint whether the room exists
            self._limited("forbidden")
            await self.send_error(
                "forbidden", f"room {msg.room!r} is outside this token's rooms", room=msg.room
            )
            return
        feed = self.hub.get(msg.room)
        if feed is None:
            await self.send_error("unknown_room", f"no room {msg.room!r}", room=msg.room)
            return
        old = self.subscriptions.pop(msg.room, None)
        limit = self.config.max_subscriptions
        room_limit = self.config.max_room_dashboards
        if old is not None:
            old.cancel()
        elif len(self.subscriptions) >= limit:
            self._limited("too_many_subscriptions")
            await self.send_error(
                "too_many_subscriptions", f"at most {limit} rooms per connection", room=msg.room
            )
            return
        elif self.access is not None and self.access.room_load(msg.room) >= room_limit:
            self._limited("room_full")
            await self.send_error(
                "room_full", f"room {msg.room!r} has {room_limit} dashboards", room=msg.room
            )
            return
        scope = trio.CancelScope()
        self.subscriptions[msg.room] = scope
        self._nursery.start_soon(self._write, feed, msg.since, scope)

    # --- writing ----------------------------------------------------------------

    async def _write(self, feed: RoomFeed, since: Since | None, scope: trio.CancelScope) -> None:
        """Send ``feed``'s deltas from the client's position on, for as long as subscribed."""
        latency = self.latency.labels(feed.room_id) if self.latency is not None else None
        with scope:
            if since is not None and feed.can_resume(since.epoch, since.seq):
                epoch, cursor = since.epoch, since.seq
            else:
                epoch, cursor = await self._send_snapshot(feed)
            while True:
                await feed.wait_beyond(cursor, epoch)
                if feed.closed:
                    await self.send_error("room_closed", f"room {feed.room_id!r} was removed")
                    return
                if feed.epoch != epoch:
                    epoch, cursor = await self._send_snapshot(feed)
                elif cursor < feed.first_seq - 1:
                    self.lagged += 1
                    self.totals.lagged[feed.room_id] += 1
                    await self.send_json(
                        {
                            "type": "lagged",
                            "room": feed.room_id,
                            "epoch": epoch,
                            "missed_from": cursor + 1,
                            "latest": feed.seq,
                        }
                    )
                    epoch, cursor = await self._send_snapshot(feed)
                else:
                    oldest = feed.received_at(cursor + 1)
                    cursor, body = feed.deltas_after(cursor, limit=MAX_DELTAS_PER_MESSAGE)
                    await self.send(body)
                    if latency is not None:
                        latency.observe(trio.current_time() - oldest)

    async def _send_snapshot(self, feed: RoomFeed) -> tuple[str, int]:
        epoch = feed.epoch
        seq, body = feed.snapshot()
        self.snapshots += 1
        self.totals.snapshots[feed.room_id] += 1
        await self.send(body)
        return epoch, seq

    # --- heartbeat --------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_s
        if not math.isfinite(interval) or interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            try:
                with trio.fail_after(interval):
                    await self.ws.ping()
            except trio.TooSlowError:
                self.kill(f"no pong within {interval}s")
            except ConnectionClosed:
                return
            except trio.Cancelled:
                # We cannot tell whether the ping frame was cut mid-write: do not
                # follow it with a close frame.
                self._dead = True
                raise
