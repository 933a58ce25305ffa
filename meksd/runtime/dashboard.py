"""One dashboard connection: a reader, a pump for rooms that are behind, a heartbeat.

Output goes through the connection's :class:`~meksd.runtime.wsconn.WsConnection`,
which writes whole frames to the socket at once and keeps what the kernel refuses in
its ``out`` buffer, drained by its own writer task. Nothing here awaits a send: a
frame is either written or queued whole, so no cancellation can tear one, and a
dashboard that stops reading is killed (and its socket reset, freeing its buffers)
when its buffer makes no progress for ``send_timeout_s``.

Each subscription is a :class:`Subscription`: a cursor into the room's
:class:`~meksd.runtime.hub.RoomFeed`. While it is *live* (caught up, nothing waiting
on its socket) the feed writes each new delta frame to it directly when it publishes:
one non-blocking ``send`` per dashboard, no task wake-up. When the socket cannot take
a frame, the subscription leaves the live set and this dashboard's *pump* catches it
up from the ring once the socket drains — several deltas in one message, or
``lagged`` then a snapshot if its cursor fell off the ring — then makes it live again
in the same synchronous step that finds it caught up.

The reader is the gate for what a client sends (``docs/security.md``): the message
rate (``rate_limited``; sustained, 1008), authentication (before a valid token only
``hello`` and ``ping`` are answered; none within ``auth_timeout_s``: 1008) and room
scope (``forbidden``). :attr:`Dashboard.role`, :attr:`Dashboard.rooms` and
:meth:`Dashboard.can_command` say what the connection may do.

A connection accepted with the ``meks.v1.msgpack`` subprotocol (:attr:`Dashboard.msgpack`)
is sent every message as msgpack in a binary frame, and may send msgpack in binary
frames as well as JSON in text frames; the rules for what it sends are the same.
"""

from __future__ import annotations

import math
import os

import orjson
import trio
from loguru import logger

from meksd import __version__
from meksd.config import ServerConfig
from meksd.core.access import OPEN_GRANT, Grant, Role, authenticate
from meksd.core.limits import RateLimit, new_gate, pass_message
from meksd.core.protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, from_wire
from meksd.model.commands import CommandResult
from meksd.model.wire import Command, Hello, Ping, ProtocolError, Subscribe, Unsubscribe
from meksd.runtime.access import Access
from meksd.runtime.codec import from_msgpack, to_msgpack
from meksd.runtime.commands import CommandRouter, ack_message, answer_command
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub, RoomFeed
from meksd.runtime.stats import DashboardTotals
from meksd.runtime.wsconn import ConnectionGone, WsConnection

PROTOCOL = SUBPROTOCOL_JSON
MAX_DELTAS_PER_MESSAGE = 256
CLOSE_TIMEOUT_S = 2.0


class Subscription:
    """One room of one dashboard: where the dashboard is in the room's history."""

    __slots__ = ("conn", "cursor", "dash", "epoch", "feed", "live", "msgpack")

    def __init__(self, dash: Dashboard, feed: RoomFeed, epoch: str | None, cursor: int) -> None:
        self.dash = dash
        self.conn = dash.conn
        self.feed = feed
        self.epoch = epoch
        """The epoch the client holds; None until it has a snapshot."""
        self.cursor = cursor
        """The last seq the client has (been sent)."""
        self.live = False
        self.msgpack = dash.msgpack
        """Frames for this subscription are msgpack (binary), not JSON (text)."""

    def deliver(self, seq: int, frame: bytes, size: int) -> bool:
        """Called by the feed as it publishes ``seq``. Synchronous; the hot path of the
        fan-out (once per dashboard per delta), so it does no more than it must."""
        if not self.conn.offer(frame):
            self.unlive()
            return False
        self.cursor = seq
        dash = self.dash  # count_sent, inline (a call per dashboard per delta saved)
        dash.messages_sent += 1
        dash.bytes_sent += size
        totals = dash.totals
        totals.messages_sent += 1
        totals.bytes_sent += size
        return True

    def unlive(self) -> None:
        """Leave the live set's path: the pump looks at this subscription again."""
        self.live = False
        self.dash.wake()


class Dashboard:
    """Serves one accepted WebSocket until the client leaves or the server closes it."""

    def __init__(
        self,
        conn: WsConnection,
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
        self.conn = conn
        self.hub = hub
        self.config = config
        self.protocol = conn.subprotocol or PROTOCOL
        """``meks.v1`` (JSON; also when the client named no subprotocol) or
        ``meks.v1.msgpack``."""
        self.msgpack = self.protocol == SUBPROTOCOL_MSGPACK
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
        self.subscriptions: dict[str, Subscription] = {}
        self.messages_sent = 0
        self.bytes_sent = 0
        self.lagged = 0
        self.snapshots = 0
        self._scope = trio.CancelScope()
        self._close: tuple[int, str] = (1000, "")
        self._pump_wake = trio.Event()
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
            "protocol": self.protocol,
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
            self.send_error("unauthorized", f"no valid token within {timeout:g}s")
            self.close(1008, "authentication timeout")

    # --- lifecycle --------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns once it is closed one way or the other."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.conn.run_writer)
                    nursery.start_soon(self._pump)
                    nursery.start_soon(self._heartbeat)
                    if self.grant is None:
                        nursery.start_soon(self._auth_deadline)
                    self.send_message(self._welcome())
                    await self._read()
                    nursery.cancel_scope.cancel()
        finally:
            for sub in self.subscriptions.values():
                sub.feed.leave(sub)
            self.subscriptions.clear()
            with trio.CancelScope(shield=True):
                if not self.conn.dead:
                    code, reason = self._close
                    await self.conn.aclose(code, reason, timeout=CLOSE_TIMEOUT_S)
                self.conn.kill("closed")

    def close(self, code: int, reason: str) -> None:
        """Ask for a graceful close (shutdown: 1001; revoked: 1008). Synchronous."""
        self._close = (code, reason)
        self._scope.cancel()

    def kill(self, why: str) -> None:
        """Drop the connection at once (no close frame). Synchronous."""
        if not self.conn.dead:
            self.totals.killed += 1
            self._log.info("dashboard connection killed: {why}", why=why, event="conn_killed")
            self.conn.kill(why, reset=True)
        self._scope.cancel()

    # --- sending (never awaits) -------------------------------------------------------

    def count_sent(self, n: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += n
        self.totals.messages_sent += 1
        self.totals.bytes_sent += n

    def send(self, body: bytes) -> None:
        """Queue one message already encoded for this connection (written now if the
        socket takes it): JSON in a text frame, or msgpack in a binary frame."""
        if self.msgpack:
            self.conn.send_binary_nowait(body)
        else:
            self.conn.send_text_nowait(body)
        self.count_sent(len(body))

    def send_message(self, message: dict[str, object]) -> None:
        """Encode ``message`` for this connection (JSON or msgpack) and queue it."""
        self.send(to_msgpack(message) if self.msgpack else orjson.dumps(message))

    def send_error(self, code: str, message: str, **extra: object) -> None:
        self.send_message({"type": "error", "code": code, "message": message, **extra})

    # --- reading ----------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                data = await self.conn.next_message()
            except ConnectionGone:
                code = self.conn.close_code
                if code == 1009:
                    self._limited("message_too_big")
                elif code in (1002, 1007):  # broken framing, invalid UTF-8 in a text frame
                    self._limited("protocol_error")
                reason = self.conn.death_reason
                if reason in ("send_timeout", "backlog"):
                    self._limited(reason)
                if reason in ("send_timeout", "backlog", "send_failed"):
                    self.totals.killed += 1
                return
            self._gate, verdict = pass_message(self._gate, self._rate, trio.current_time())
            if verdict != "ok":
                self._limited("rate_limited" if verdict == "limited" else "rate_abuse")
                self.send_error(
                    "rate_limited",
                    f"message dropped: at most {self._rate.rate:g} messages per second "
                    f"(bursts of {self._rate.burst})",
                )
                if verdict == "abuse":
                    self.close(1008, "rate limit exceeded")
                    return
                continue
            if isinstance(data, str):
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    self.send_error("bad_json", f"message is not JSON: {exc}"[:200])
                    continue
            elif self.msgpack:
                obj = from_msgpack(data)
                if isinstance(obj, ProtocolError):
                    self.send_error(obj.code, obj.message)
                    continue
            else:
                self.send_error("bad_request", "expected a text message, got binary")
                continue
            msg = from_wire(obj)
            if self.grant is None and not isinstance(msg, Hello | Ping | ProtocolError):
                self._limited("unauthorized")
                self.send_error(
                    "unauthorized", 'authenticate first: {"type": "hello", "token": ...}'
                )
            elif isinstance(msg, Command) and not self.can_read(msg.room):
                self._limited("forbidden")
                refusal = CommandResult(
                    False, "forbidden", f"room {msg.room!r} is outside this token's rooms"
                )
                self.send_message(ack_message(msg.id, refusal))
            else:
                await self._dispatch(msg)

    def _hello(self, msg: Hello) -> None:
        """Authenticate with ``hello``'s token (token mode), answer with ``welcome``."""
        policy = self.access.policy if self.access is not None else None
        if msg.token is not None and policy is not None and policy.mode == "token":
            grant = authenticate(msg.token, policy.tokens)
            if grant is None:
                self._limited("bad_token")
                self.send_error("unauthorized", "invalid token")
                self.close(1008, "invalid token")
                return
            if self.grant is not None and grant != self.grant:
                self.send_error(
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
            self.send_error("unauthorized", "hello needs a token on this server")
            return
        self.send_message(self._welcome())

    async def _dispatch(self, msg: object) -> None:
        if isinstance(msg, ProtocolError):
            self.send_error(msg.code, msg.message)
        elif isinstance(msg, Ping):
            pong: dict[str, object] = {"type": "pong"}
            if msg.id is not None:
                pong["id"] = msg.id
            self.send_message(pong)
        elif isinstance(msg, Hello):
            self._hello(msg)
        elif isinstance(msg, Subscribe):
            self._subscribe(msg)
        elif isinstance(msg, Unsubscribe):
            sub = self.subscriptions.pop(msg.room, None)
            if sub is not None:
                sub.feed.leave(sub)
        elif isinstance(msg, Command):
            # The reader let it through: authenticated, room in scope. Viewers: forbidden.
            ack = await answer_command(
                msg,
                role=self.role or "viewer",
                known_room=self.hub.get(msg.room) is not None,
                router=self.commands,
                conn_id=self.conn_id,
                # Token mode: the token's name; open mode: each connection on its own.
                operator=self.grant.name if self.grant and self.grant is not OPEN_GRANT else None,
            )
            self.send_message(ack)

    def _subscribe(self, msg: Subscribe) -> None:
        if not self.can_read(msg.room):  # checked first: no hint whether the room exists
            self._limited("forbidden")
            self.send_error(
                "forbidden", f"room {msg.room!r} is outside this token's rooms", room=msg.room
            )
            return
        feed = self.hub.get(msg.room)
        if feed is None:
            self.send_error("unknown_room", f"no room {msg.room!r}", room=msg.room)
            return
        old = self.subscriptions.pop(msg.room, None)
        limit = self.config.max_subscriptions
        room_limit = self.config.max_room_dashboards
        if old is not None:
            old.feed.leave(old)
        elif len(self.subscriptions) >= limit:
            self._limited("too_many_subscriptions")
            self.send_error(
                "too_many_subscriptions", f"at most {limit} rooms per connection", room=msg.room
            )
            return
        elif self.access is not None and self.access.room_load(msg.room) >= room_limit:
            self._limited("room_full")
            self.send_error(
                "room_full", f"room {msg.room!r} has {room_limit} dashboards", room=msg.room
            )
            return
        since = msg.since
        if since is not None and feed.can_resume(since.epoch, since.seq):
            sub = Subscription(self, feed, since.epoch, since.seq)
        else:
            sub = Subscription(self, feed, None, -1)
        self.subscriptions[msg.room] = sub
        self.wake()

    # --- catching up --------------------------------------------------------------

    def wake(self) -> None:
        """Some subscription is not live: the pump should look. Synchronous."""
        self._pump_wake.set()

    async def _pump(self) -> None:
        """Catch up subscriptions that are not live, one batch per drained socket."""
        conn = self.conn
        while True:
            await self._pump_wake.wait()
            self._pump_wake = trio.Event()
            while True:
                await conn.wait_drained()  # bounded: the writer kills a stalled peer
                if conn.dead:
                    self._scope.cancel()
                    return
                behind = [sub for sub in self.subscriptions.values() if not sub.live]
                if not behind:
                    break
                for sub in behind:
                    self._catch_up(sub)
                await trio.lowlevel.checkpoint()

    def _catch_up(self, sub: Subscription) -> None:
        """Send ``sub`` what it lacks (synchronously), and make it live if it has all."""
        feed = sub.feed
        if feed.closed:
            self.send_error("room_closed", f"room {feed.room_id!r} was removed", room=feed.room_id)
            if self.subscriptions.get(feed.room_id) is sub:
                del self.subscriptions[feed.room_id]
            return
        if sub.epoch != feed.epoch:
            self._send_snapshot(sub)
        elif sub.cursor < feed.first_seq - 1:
            self.lagged += 1
            self.totals.lagged[feed.room_id] += 1
            self.send_message(
                {
                    "type": "lagged",
                    "room": feed.room_id,
                    "epoch": sub.epoch,
                    "missed_from": sub.cursor + 1,
                    "latest": feed.seq,
                }
            )
            self._send_snapshot(sub)
        elif sub.cursor < feed.seq:
            oldest = feed.received_at(sub.cursor + 1)
            sub.cursor, body = feed.deltas_after(
                sub.cursor, limit=MAX_DELTAS_PER_MESSAGE, msgpack=self.msgpack
            )
            self.send(body)
            if self.latency is not None:
                self.latency.labels(feed.room_id).observe(trio.current_time() - oldest)
        caught_up = sub.cursor == feed.seq and sub.epoch == feed.epoch
        idle = not self.conn.out and not self.conn.dead
        if caught_up and idle and self.subscriptions.get(feed.room_id) is sub:
            sub.live = True
            feed.join(sub)

    def _send_snapshot(self, sub: Subscription) -> None:
        feed = sub.feed
        epoch = feed.epoch
        seq, body = feed.snapshot(msgpack=self.msgpack)
        self.snapshots += 1
        self.totals.snapshots[feed.room_id] += 1
        self.send(body)
        sub.epoch, sub.cursor = epoch, seq

    # --- heartbeat --------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Ping every ``heartbeat_s``; no pong for two intervals kills the connection."""
        interval = self.config.heartbeat_s
        if not math.isfinite(interval) or interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            if trio.current_time() - self.conn.last_pong > 2 * interval:
                self.kill(f"no pong for {2 * interval:g}s")
                return
            self.conn.ping_nowait(os.urandom(4))
