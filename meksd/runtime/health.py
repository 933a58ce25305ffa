"""Readiness: is each room's feed delivering, or is its silence explained?

A room is **ready** when one of these holds, checked in this order:

1. it has no source configured (nothing is expected of it);
2. a record arrived within the last ``stall_s`` seconds (the room's setting: it is
   delivering; the reason names the active source);
3. its state says the stream ended (``live == "ended"``, after the feed's
   ``streamEnd``) or is paused (``live == "paused"``);
4. one of its sources finished (a replay without ``loop`` played out).

Anything else is not ready, with a reason that names the active source and what
every source is doing (``connecting``, ``backoff`` and its last error, or
``connected`` but silent).
A room that has never received a record is not ready: "green while delivering
nothing" must not happen, not even during start-up.

Everything here is synchronous and reads only what the room exposes; the clock is
an argument (``trio.current_time()`` in the shell).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from meksd.runtime.room import Room

__all__ = ["STALL_S", "RoomReadiness", "room_readiness"]

STALL_S = 20.0
"""The stall window of a room without settings (the default of ``[[rooms]] stall_s``);
rooms use their own ``stall_s``."""


@attrs.frozen
class RoomReadiness:
    """Whether one room is ready, and why (for ``/readyz`` and the admin API)."""

    room: str
    """The room id."""
    ready: bool
    """True when the room delivers, or its silence is explained."""
    reason: str
    """For operators: what was found, e.g. ``delivering (last record 0.4s ago)``."""

    def to_json(self) -> dict[str, object]:
        return {"room": self.room, "ready": self.ready, "reason": self.reason}


def room_readiness(room: Room, now: float, *, stall_s: float | None = None) -> RoomReadiness:
    """The readiness of ``room`` at ``now`` (``trio.current_time()`` scale).

    ``stall_s`` defaults to the room's ``settings.stall_s``. Synchronous; never
    checkpoints.
    """
    rid = room.room_id
    sources = [source.statistics() for source in room.sources]
    if not sources:
        return RoomReadiness(rid, True, "no source configured")
    window = room.settings.stall_s if stall_s is None else stall_s
    active = sources[room.selector.active].name

    last = room.counters.last_event_at
    for stats in sources:
        if stats.last_record_at is not None and (last is None or stats.last_record_at > last):
            last = stats.last_record_at
    if last is not None and now - last <= window:
        return RoomReadiness(
            rid, True, f"delivering via {active} (last record {now - last:.1f}s ago)"
        )

    live = room.state.live
    if live == "ended":
        return RoomReadiness(rid, True, "stream ended")
    if live == "paused":
        return RoomReadiness(rid, True, "stream paused")

    for stats in sources:
        if stats.state == "finished":
            return RoomReadiness(rid, True, f"source {stats.name} finished (feed played out)")

    # Not ready: say how long it has been silent and what the feed is doing.
    silent = (
        "no record received yet"
        if last is None
        else f"no record for {now - last:.1f}s (stall window {window:g}s)"
    )
    doing = []
    for stats in sources:
        what = f"{stats.name} {stats.state}"
        if stats.state != "connected" and stats.last_error:
            what += f" ({stats.last_error})"
        doing.append(what)
    return RoomReadiness(rid, False, f"{silent}; active {active}; source {', '.join(doing)}")
