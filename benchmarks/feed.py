"""The benchmark feed: stamped events, rate profiles, and the feed server.

Every event is a real feed envelope (``chat``, or a ``gift`` counted at once, about
300 bytes each, in the connectors' field names) whose ``msgId`` is a *token*::

    BMK<room>.<seq>.<phase>.<sent_ns>

``seq`` counts the events of one room from 1, without holes; ``phase`` names the part
of the profile the event belongs to; ``sent_ns`` is ``time.monotonic_ns()`` taken just
before the message is written. On Linux ``CLOCK_MONOTONIC`` is one clock for the whole
machine, so the load client (another process) subtracts it from its own
``time.monotonic_ns()`` at receipt: that is the feed-send → dashboard-receive latency.

The trick that makes this work through meksd: meksd passes ``msgId`` through to
dashboards (``msg_id`` of each item in a delta's ``chat`` and ``gifts``), and the peers
pass whole envelopes through. Tokens are unique, so meksd's de-duplication never
drops one.

A profile is a list of :class:`Segment` (a rate held, or ramped linearly, for some
seconds). ``steady``, ``burst`` and ``ramp`` build the usual shapes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import attrs
import websockets

_PAD = "so fun to watch this stream, greetings from the benchmark feed"


@attrs.frozen
class Segment:
    """``rate_from`` → ``rate_to`` events/s per room (linear), for ``seconds``."""

    phase: int
    seconds: float
    rate_from: float
    rate_to: float

    def due(self, t: float) -> float:
        """Events due per room from the segment's start to ``t`` (the rate's integral)."""
        t = min(t, self.seconds)
        slope = (self.rate_to - self.rate_from) / self.seconds if self.seconds else 0.0
        return self.rate_from * t + slope * t * t / 2


def steady(phase: int, rate: float, seconds: float) -> list[Segment]:
    return [Segment(phase, seconds, rate, rate)]


def burst(
    phase: int, base: float, peak: float, seconds: float, every_s: float, burst_s: float
) -> list[Segment]:
    """``base`` events/s with ``burst_s``-long bursts of ``peak`` at the end of each
    ``every_s`` period."""
    out: list[Segment] = []
    left = seconds
    while left > 0:
        calm = min(every_s - burst_s, left)
        out.append(Segment(phase, calm, base, base))
        left -= calm
        if left <= 0:
            break
        hot = min(burst_s, left)
        out.append(Segment(phase, hot, peak, peak))
        left -= hot
    return out


def ramp(phase: int, rate_from: float, rate_to: float, seconds: float) -> list[Segment]:
    return [Segment(phase, seconds, rate_from, rate_to)]


def envelope(room: int, seq: int, phase: int) -> str:
    """One ~300-byte feed event; 3 in 4 are chat, 1 in 4 a gift counted at once."""
    user = 6_800_000 + seq % 300
    token = f"BMK{room}.{seq}.{phase}.{time.monotonic_ns()}"
    if seq % 4 == 3:
        return (
            f'{{"event":"gift","data":{{"msgId":"{token}","userId":"{user}",'
            f'"uniqueId":"viewer_{user}","nickname":"Viewer {user} \\u2728",'
            f'"giftId":5660,"giftName":"Hand Hearts","giftType":0,"repeatCount":1,'
            f'"repeatEnd":false,"groupId":"{seq}","diamondCount":100,'
            f'"describe":"sent Hand Hearts","createTime":1763729000000}}}}'
        )
    return (
        f'{{"event":"chat","data":{{"msgId":"{token}","userId":"{user}",'
        f'"uniqueId":"viewer_{user}","nickname":"Viewer {user} \\u2728",'
        f'"comment":"#{seq} {_PAD} {_PAD[: 40 + seq % 40]}","createTime":1763729000000}}}}'
    )


class FeedServer:
    """A WebSocket server the broker connects to (``/feed/<room index>``); sends events
    only when :meth:`play` is called."""

    def __init__(self) -> None:
        self.conns: dict[int, websockets.ServerConnection] = {}
        self.seq: dict[int, int] = {}
        self.connected = asyncio.Condition()
        self.port = 0
        self.disconnects = 0
        self.stalls = 0
        """Sends abandoned because the broker stopped reading past a segment's end."""
        self._server: websockets.Server | None = None

    async def start(self) -> int:
        # No keepalive pings: a broker that falls seconds behind would answer late
        # and be dropped, losing what was queued; we measure the lateness instead.
        self._server = await websockets.serve(
            self._handle, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, room: int) -> str:
        return f"ws://127.0.0.1:{self.port}/feed/{room}"

    async def _handle(self, ws: websockets.ServerConnection) -> None:
        room = int(ws.request.path.rsplit("/", 1)[-1])
        async with self.connected:
            self.conns[room] = ws
            self.seq.setdefault(room, 0)
            self.connected.notify_all()
        try:
            await ws.wait_closed()
        finally:
            if self.conns.get(room) is ws:
                del self.conns[room]
                self.disconnects += 1

    async def wait_for(self, rooms: int, timeout: float) -> None:
        async with asyncio.timeout(timeout), self.connected:
            await self.connected.wait_for(lambda: len(self.conns) >= rooms)

    async def play(
        self, segments: list[Segment], on_tick: Callable[[], None] | None = None
    ) -> dict[int, dict[str, object]]:
        """Send ``segments`` to every connected room; bounded by their total length.

        Returns per phase: seq span per room, events sent, seconds, achieved rate.
        """
        out: dict[int, dict[str, object]] = {}
        rooms = sorted(self.seq)
        if len(self.conns) < len(rooms):  # a broker that dropped its feed: let it return
            await self.wait_for(len(rooms), 15)
        for seg in segments:
            rec = out.setdefault(
                seg.phase,
                {"spans": {}, "sent": 0, "seconds": 0.0, "target": 0.0, "started": None},
            )
            spans: dict[str, list[int]] = rec["spans"]  # type: ignore[assignment]
            for r in rooms:
                spans.setdefault(str(r), [self.seq[r] + 1, self.seq[r]])
            if rec["started"] is None:
                rec["started"] = time.monotonic()
            start = time.monotonic()
            # A broker that cannot keep up pushes back (its ingest queue is full and it
            # stops reading): stop at 1.2x the segment's length plus 3 s, whatever is owed.
            hard_stop = start + 1.2 * seg.seconds + 3
            sent = 0
            while True:
                t = time.monotonic() - start
                owed = math.floor(seg.due(t)) - sent
                if owed > 0:
                    for i in range(owed):
                        if i % 64 == 63 and time.monotonic() > hard_stop:
                            owed = i
                            break
                        for r in rooms:
                            ws = self.conns.get(r)
                            self.seq[r] += 1
                            if ws is not None:
                                left = max(hard_stop - time.monotonic(), 0.5)
                                try:
                                    await asyncio.wait_for(
                                        ws.send(envelope(r, self.seq[r], seg.phase)), left
                                    )
                                except TimeoutError:
                                    # The broker stopped reading; count what was sent.
                                    self.stalls += 1
                                    hard_stop = 0.0
                    sent += owed
                if t >= seg.seconds or time.monotonic() > hard_stop:
                    break
                if on_tick is not None:
                    on_tick()
                await asyncio.sleep(0.001)
            elapsed = time.monotonic() - start
            for r in rooms:
                spans[str(r)][1] = self.seq[r]
            rec["sent"] = int(rec["sent"]) + sent * len(rooms)  # type: ignore[call-overload]
            rec["seconds"] = float(rec["seconds"]) + elapsed  # type: ignore[arg-type]
            rec["target"] = float(rec["target"]) + (seg.due(seg.seconds)) * len(rooms)  # type: ignore[arg-type]
        for rec in out.values():
            secs = float(rec["seconds"])  # type: ignore[arg-type]
            rec["rate"] = int(rec["sent"]) / secs if secs else 0.0  # type: ignore[call-overload]
        return out
