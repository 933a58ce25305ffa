"""A scriptable upstream for failover tests: one event log served over WebSocket and
http-poll on 127.0.0.1, with the totals a room must end up with."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import WebSocketConnection

from meksd.config import parse_config
from meksd.model.state import Totals
from meksd.runtime.feedserver import FeedLog, FeedServer, HttpRequest, serve_http
from meksd.runtime.room import Room


@attrs.define
class Expected:
    """What the feed sent, counted the way meksd must count it."""

    diamonds: int = 0
    gifts: int = 0
    comments: int = 0
    likes: int = 0

    def matches(self, totals: Totals) -> bool:
        return (totals.diamonds, totals.gifts, totals.comments, totals.likes) == (
            self.diamonds,
            self.gifts,
            self.comments,
            self.likes,
        )


class Upstream:
    """One feed (a :class:`FeedLog`), served at ``/feed`` (WebSocket) and ``/poll``.

    - ``silence()``: WebSocket connections stay open (new ones are accepted) but
      nothing is sent until ``speak()``.
    - ``replay``: events re-sent first on every WebSocket connect.
    - ``close_after``: a WebSocket connection is closed after sending this many.
    - ``hang_up``: every WebSocket connection is closed at once after the handshake.
    """

    def __init__(self, *, replay: int = 50, poll_ms: int = 200, page: int = 200) -> None:
        self.log = FeedLog(capacity=1_000_000)
        self.expected = Expected()
        self.replay = replay
        self.close_after: int | None = None
        self.hang_up = False
        self.ws_connects: list[float] = []
        self.polls: list[float] = []
        self._poll = FeedServer(self.log, poll_ms=poll_ms, page=page)
        self._quiet = False
        self._speak = trio.Event()
        self._ids = itertools.count(1)
        self._groups = itertools.count(1)

    # --- the feed ---------------------------------------------------------------

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.log.append(orjson.dumps({"event": event, "data": data}))

    def _user(self, n: int) -> dict[str, Any]:
        return {"msgId": f"m{next(self._ids)}", "userId": str(100 + n % 7), "uniqueId": f"u{n % 7}"}

    def gift(self, n: int, diamonds: int, repeat: int) -> None:
        self.emit(
            "gift",
            {
                **self._user(n),
                "giftId": 5660,
                "giftType": 0,
                "repeatCount": repeat,
                "repeatEnd": True,
                "diamondCount": diamonds,
            },
        )
        self.expected.diamonds += diamonds * repeat
        self.expected.gifts += repeat

    def streak(self, n: int, diamonds: int, final: int) -> None:
        group = str(next(self._groups))
        for count in range(1, final + 1):
            self.emit(
                "gift",
                {
                    **self._user(n),
                    "giftId": 5655,
                    "giftType": 1,
                    "groupId": group,
                    "repeatCount": count,
                    "repeatEnd": False,
                    "diamondCount": diamonds,
                },
            )
        self.emit(
            "gift",
            {
                **self._user(n),
                "giftId": 5655,
                "giftType": 1,
                "groupId": group,
                "repeatCount": final,
                "repeatEnd": True,
                "diamondCount": diamonds,
            },
        )
        self.expected.diamonds += diamonds * final
        self.expected.gifts += final

    def chat(self, n: int) -> None:
        self.emit("chat", {**self._user(n), "comment": f"hello {n}"})
        self.expected.comments += 1

    def like(self, n: int) -> None:
        count = 1 + n % 5
        self.emit("like", {**self._user(n), "likeCount": count})
        self.expected.likes += count

    def mixed(self, n: int) -> None:
        """The n-th event of a steady mix (a streak counts as one step)."""
        step = n % 6
        if step == 0:
            self.gift(n, 5, 1 + n % 3)
        elif step == 1:
            self.streak(n, 1, 1 + n % 4)
        elif step in (2, 3):
            self.chat(n)
        else:
            self.like(n)

    async def produce(self, rate: float, duration: float) -> None:
        """``mixed`` events at ``rate`` per second for ``duration`` seconds."""
        start = trio.current_time()
        for n in range(math.floor(rate * duration)):
            await trio.sleep_until(start + n / rate)
            self.mixed(n)

    # --- behaviour --------------------------------------------------------------

    def silence(self) -> None:
        self._quiet = True

    def speak(self) -> None:
        self._quiet = False
        self._speak.set()
        self._speak = trio.Event()

    async def _audible(self) -> None:
        while self._quiet:
            await self._speak.wait()

    # --- serving ----------------------------------------------------------------

    async def _handle_poll(self, request: HttpRequest) -> Any:
        if request.path == "/poll":
            self.polls.append(trio.current_time())
        return await self._poll.handle_http(request)

    async def _handle_ws(self, request: HttpRequest, ws: WebSocketConnection) -> None:
        self.ws_connects.append(trio.current_time())
        if self.hang_up:
            await ws.aclose()
            return
        log = self.log
        position = max(log.first, log.next - self.replay)
        sent = 0
        while True:
            await self._audible()
            await log.wait_beyond(position)
            await self._audible()
            events, position = log.since(position, 100)
            for payload in events:
                await ws.send_message(payload.decode())
                sent += 1
                if self.close_after is not None and sent >= self.close_after:
                    await ws.aclose()
                    return

    async def serve(self, nursery: trio.Nursery) -> int:
        """Start serving on 127.0.0.1; return the port."""
        port: int = await nursery.start(
            partial(
                serve_http,
                self._handle_poll,
                "127.0.0.1",
                0,
                websocket=self._handle_ws,
                idle_timeout_s=math.inf,  # httpx expires keep-alive by the real clock
            )
        )
        return port


def room_from_toml(text: str) -> Room:
    """A Room (not started) for the single room of ``text``."""
    settings = parse_config(text).rooms[0]
    return Room(settings, tick_s=0.016, ring_size=4096)


async def wait_for(done: Callable[[], bool], *, every: float = 0.05) -> None:
    """Poll ``done`` (for state the test does not own an event for)."""
    while not done():
        await trio.sleep(every)
