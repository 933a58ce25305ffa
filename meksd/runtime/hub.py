"""The hub: where a room's actor publishes and its dashboards read.

Per room there is one :class:`RoomFeed`: a ring of the last ``ring_size`` encoded
deltas, the state as of the newest one, and the set of *live* subscribers (caught
up, nothing waiting on their socket). Publishing appends to the ring and writes the
delta's frame to each live subscriber with one non-blocking send; it never waits for
a reader. A subscriber that cannot take the frame leaves the live set and its
dashboard catches it up from the ring at its own pace; one that falls off the ring is
*lagged* and gets a snapshot instead (see :mod:`meksd.runtime.dashboard`).

Deltas are encoded to bytes once per room, here, not once per dashboard. A snapshot
is encoded lazily, at most once per published seq, when some writer needs it.

Two encodings (``docs/protocol.md``): JSON, which the actor hands in, and msgpack for
``meks.v1.msgpack`` dashboards. A delta's msgpack body is transcoded from its JSON
body at most once, and only when a msgpack subscriber needs it: at publish when one
is live, else lazily when one catches up from the ring. A room with no msgpack
dashboard never encodes msgpack; its publish does one extra list store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import orjson

from meksd.core.wire import snapshot_message
from meksd.model.state import RoomState
from meksd.runtime.codec import json_to_msgpack, msgpack_array, to_msgpack
from meksd.runtime.wsconn import binary_frame, text_frame


@attrs.frozen
class FeedStatistics:
    """What a room's feed has done; read by metrics and the admin API."""

    epoch: str
    """The history the current seq numbers belong to."""
    seq: int
    """Seq of the newest published delta (0: nothing published in this epoch)."""
    first_seq: int
    """Oldest seq still in the ring; a cursor below this is lagged."""
    published: int
    """Deltas published since this process started."""
    published_bytes: int
    """Encoded bytes of those deltas."""
    snapshots_encoded: int
    """Snapshots encoded (at most one per seq, however many dashboards asked)."""
    msgpack_encoded: int = 0
    """Deltas transcoded to msgpack (at most once each; none without msgpack dashboards)."""
    msgpack_snapshots_encoded: int = 0
    """Snapshots encoded as msgpack (at most one per seq)."""


class Subscriber(Protocol):
    """A dashboard's subscription as the feed sees it while it is *live*.

    A live subscriber has applied everything up to the feed's ``seq`` and its
    connection has nothing waiting: :meth:`RoomFeed.publish` writes the new frame to
    it directly. ``deliver`` returns False when it cannot take the frame now
    (congested or gone); it then leaves the live set and catches up on its own.
    """

    msgpack: bool
    """Whether the frames it takes are ``meks.v1.msgpack`` (binary) rather than JSON."""

    def deliver(self, seq: int, frame: bytes, size: int) -> bool:
        """Write ``frame`` (delta ``seq``, a message of ``size`` payload bytes) now."""
        ...

    def unlive(self) -> None: ...


class RoomFeed:
    """One room's publication point. Only the room's actor calls the mutators.

    Every method is synchronous and never checkpoints.
    """

    def __init__(self, state: RoomState, seq: int, *, ring_size: int) -> None:
        if ring_size < 1:
            raise ValueError("ring_size must be >= 1")
        self.room_id = state.room_id
        self._ring_size = ring_size
        self._ring: list[bytes] = [b""] * ring_size
        self._ring_msgpack: list[bytes | None] = [None] * ring_size
        """The msgpack body of each delta in the ring, once some subscriber needed it."""
        self._times: list[float] = [0.0] * ring_size
        self._state = state
        self._epoch = state.epoch
        self._seq = seq
        self._first_seq = seq + 1  # ring empty: nothing older than seq is kept
        self._live: set[Subscriber] = set()
        self._live_msgpack: set[Subscriber] = set()
        self._closed = False
        self._snapshot: tuple[int, str, bytes] | None = None
        self._snapshot_msgpack: tuple[int, str, bytes] | None = None
        self._published = 0
        self._published_bytes = 0
        self._snapshots_encoded = 0
        self._msgpack_encoded = 0
        self._msgpack_snapshots_encoded = 0
        self.on_delivered: Callable[[float], None] | None = None
        """Called once per publish that at least one live dashboard took, with the
        oldest event's receipt time (the end-to-end latency metric)."""

    # --- read side ------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def first_seq(self) -> int:
        return self._first_seq

    @property
    def state(self) -> RoomState:
        """The state as of :attr:`seq` (what a snapshot shows)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def can_resume(self, epoch: str, seq: int) -> bool:
        """Whether a client that has applied ``seq`` of ``epoch`` can be sent deltas."""
        return epoch == self._epoch and self._first_seq - 1 <= seq <= self._seq

    def deltas_after(self, seq: int, *, limit: int, msgpack: bool = False) -> tuple[int, bytes]:
        """Encoded deltas ``seq+1 ..`` as one message body, and the last seq included.

        One delta is sent as its JSON object; several as a JSON array, in seq order.
        With ``msgpack``, the same as a msgpack map or array. The caller must have
        checked ``first_seq - 1 <= seq < self.seq``.
        """
        start = seq + 1
        end = min(self._seq, seq + limit)
        size = self._ring_size
        if msgpack:
            if start == end:
                return end, self._msgpack_body(start)
            return end, msgpack_array([self._msgpack_body(s) for s in range(start, end + 1)])
        if start == end:
            return end, self._ring[start % size]
        parts = [self._ring[s % size] for s in range(start, end + 1)]
        return end, b"[" + b",".join(parts) + b"]"

    def _msgpack_body(self, seq: int) -> bytes:
        """Delta ``seq`` (in the ring) as msgpack, transcoded at most once."""
        i = seq % self._ring_size
        body = self._ring_msgpack[i]
        if body is None:
            body = self._ring_msgpack[i] = json_to_msgpack(self._ring[i])
            self._msgpack_encoded += 1
        return body

    def received_at(self, seq: int) -> float:
        """When the oldest event of delta ``seq`` was received (``trio.current_time()``)."""
        return self._times[seq % self._ring_size]

    def snapshot(self, *, msgpack: bool = False) -> tuple[int, bytes]:
        """The encoded snapshot message of the current state, and its seq.

        JSON, or with ``msgpack`` the same message as msgpack; each encoded at most
        once per seq.
        """
        cached = self._snapshot_msgpack if msgpack else self._snapshot
        if cached is not None and cached[0] == self._seq and cached[1] == self._epoch:
            return cached[0], cached[2]
        message = snapshot_message(self._state, self._seq)
        if msgpack:
            body = to_msgpack(message)
            self._snapshot_msgpack = (self._seq, self._epoch, body)
            self._msgpack_snapshots_encoded += 1
        else:
            body = orjson.dumps(message)
            self._snapshot = (self._seq, self._epoch, body)
            self._snapshots_encoded += 1
        return self._seq, body

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(
            epoch=self._epoch,
            seq=self._seq,
            first_seq=self._first_seq,
            published=self._published,
            published_bytes=self._published_bytes,
            snapshots_encoded=self._snapshots_encoded,
            msgpack_encoded=self._msgpack_encoded,
            msgpack_snapshots_encoded=self._msgpack_snapshots_encoded,
        )

    # --- write side (the room's actor only) -------------------------------------

    def join(self, sub: Subscriber) -> None:
        """Make ``sub`` live: it has everything up to :attr:`seq` and nothing waiting."""
        (self._live_msgpack if sub.msgpack else self._live).add(sub)

    def leave(self, sub: Subscriber) -> None:
        self._live.discard(sub)
        self._live_msgpack.discard(sub)

    def publish(self, seq: int, body: bytes, state: RoomState, received_at: float) -> None:
        """Append the encoded delta ``seq`` and write its frame to every live subscriber.

        ``state`` is the room state after the delta; ``received_at`` is when the
        oldest event in it was received (for the end-to-end latency metric). One
        non-blocking send per live subscriber; nothing waits for a reader, and one
        that cannot take the frame leaves the live set to catch up on its own.
        """
        if seq != self._seq + 1 or state.epoch != self._epoch:
            raise ValueError(f"publish out of order: {seq} after {self._seq}")
        i = seq % self._ring_size
        self._ring[i] = body
        self._ring_msgpack[i] = None
        self._times[i] = received_at
        self._seq = seq
        self._state = state
        self._first_seq = max(self._first_seq, seq - self._ring_size + 1)
        self._published += 1
        self._published_bytes += len(body)
        # One frame per encoding for everyone: server frames are unmasked, so the
        # bytes are the same for every dashboard.
        reached = bool(self._live) and _fan_out(self._live, seq, text_frame(body), len(body))
        if self._live_msgpack:
            packed = self._msgpack_body(seq)
            frame = binary_frame(packed)
            reached = _fan_out(self._live_msgpack, seq, frame, len(packed)) or reached
        if reached and self.on_delivered is not None:
            self.on_delivered(received_at)

    def reset(self, state: RoomState, seq: int) -> None:
        """Start a new history (a new epoch): the ring is emptied, writers resync."""
        self._epoch = state.epoch
        self._state = state
        self._seq = seq
        self._first_seq = seq + 1
        self._ring = [b""] * self._ring_size
        self._ring_msgpack = [None] * self._ring_size
        self._times = [0.0] * self._ring_size
        self._unlive_all()

    def close(self) -> None:
        """The room is gone (removed by a reload or shut down); writers stop."""
        self._closed = True
        self._unlive_all()

    def _unlive_all(self) -> None:
        """Every live subscriber must look at the feed again (new epoch, or closed)."""
        live, self._live = self._live, set()
        live_msgpack, self._live_msgpack = self._live_msgpack, set()
        for sub in (*live, *live_msgpack):
            sub.unlive()


def _fan_out(live: set[Subscriber], seq: int, frame: bytes, size: int) -> bool:
    """One non-blocking write of ``frame`` (``size`` payload bytes) to each of
    ``live``; those that cannot take it leave ``live``. Whether any took it."""
    subs = tuple(live)
    dropped = [sub for sub in subs if not sub.deliver(seq, frame, size)]
    for sub in dropped:
        live.discard(sub)
    return len(dropped) < len(subs)


class Hub:
    """All rooms' feeds, by room id."""

    def __init__(self) -> None:
        self._feeds: dict[str, RoomFeed] = {}

    def add(self, feed: RoomFeed) -> None:
        if feed.room_id in self._feeds:
            raise ValueError(f"room {feed.room_id!r} already in the hub")
        self._feeds[feed.room_id] = feed

    def remove(self, room_id: str) -> None:
        feed = self._feeds.pop(room_id, None)
        if feed is not None:
            feed.close()

    def get(self, room_id: str) -> RoomFeed | None:
        return self._feeds.get(room_id)

    def room_ids(self) -> list[str]:
        return sorted(self._feeds)
