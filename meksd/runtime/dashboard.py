"""One dashboard connection: a reader task, a writer task per subscribed room, a heartbeat.

Every send goes through :meth:`Dashboard.send`, which is shielded from outside
cancellation and bounded by ``send_timeout_s``. trio's ``send_all`` may have written
part of a frame when it is interrupted, so a send that fails or times out *kills* the
connection (the socket is closed at once, no close handshake): the client reconnects
and resumes with ``since``. Unsubscribing or shutting down cancels a writer only at
its waits, never in the middle of a frame.

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
from meksd.core.protocol import from_wire
from meksd.model.wire import Command, Hello, Ping, ProtocolError, Since, Subscribe, Unsubscribe
from meksd.runtime.histogram import HistogramFamily
from meksd.runtime.hub import Hub, RoomFeed
from meksd.runtime.stats import DashboardTotals

PROTOCOL = "meks.v1"
MAX_SUBSCRIPTIONS = 32
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
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.hub = hub
        self.config = config
        self.conn_id = conn_id
        self.totals = totals
        self.latency = latency
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

    # --- lifecycle --------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection; returns once it is closed one way or the other."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._heartbeat)
                    await self.send_json(
                        {
                            "type": "welcome",
                            "protocol": PROTOCOL,
                            "server": f"meksd/{__version__}",
                            "conn": self.conn_id,
                            "rooms": self.hub.room_ids(),
                            "heartbeat_s": self.config.heartbeat_s,
                        }
                    )
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

    def kill(self, why: str) -> None:
        """Drop the connection at once: its stream can no longer be trusted."""
        if not self._dead:
            self._dead = True
            self.totals.killed += 1
            self._log.info("dashboard connection killed: {why}", why=why, event="conn_killed")
        self._scope.cancel()

    async def _finish(self) -> None:
        with trio.CancelScope(shield=True):
            if not self._dead and self.ws.closed is None:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    with contextlib.suppress(Exception):  # closing a broken peer
                        await self.ws.aclose(self._close_code, self._close_reason or None)
            await trio.aclose_forcefully(self.stream)

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
                self.kill(f"send took longer than {self.config.send_timeout_s}s")
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
            except ConnectionClosed:
                return
            if isinstance(data, bytes):
                await self.send_error("bad_request", "expected a text message, got binary")
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                await self.send_error("bad_json", f"message is not JSON: {exc}"[:200])
                continue
            await self._dispatch(from_wire(obj))

    async def _dispatch(self, msg: object) -> None:
        if isinstance(msg, ProtocolError):
            await self.send_error(msg.code, msg.message)
        elif isinstance(msg, Ping):
            pong: dict[str, object] = {"type": "pong"}
            if msg.id is not None:
                pong["id"] = msg.id
            await self.send_json(pong)
        elif isinstance(msg, Hello):
            await self.send_json(
                {"type": "welcome", "protocol": PROTOCOL, "conn": self.conn_id, "role": "viewer"}
            )
        elif isinstance(msg, Subscribe):
            await self._subscribe(msg)
        elif isinstance(msg, Unsubscribe):
            scope = self.subscriptions.pop(msg.room, None)
            if scope is not None:
                scope.cancel()
        elif isinstance(msg, Command):
            await self.send_json(
                {
                    "type": "ack",
                    "id": msg.id,
                    "ok": False,
                    "error": f"unknown_action: {msg.action[:40]!r} is not supported",
                }
            )

    async def _subscribe(self, msg: Subscribe) -> None:
        feed = self.hub.get(msg.room)
        if feed is None:
            await self.send_error("unknown_room", f"no room {msg.room!r}", room=msg.room)
            return
        old = self.subscriptions.pop(msg.room, None)
        if old is not None:
            old.cancel()
        elif len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            await self.send_error(
                "too_many_subscriptions", f"at most {MAX_SUBSCRIPTIONS} rooms per connection"
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
