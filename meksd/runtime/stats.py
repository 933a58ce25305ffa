"""Per-room counters the shell keeps (not room state: nothing reduces over them).

They are plain integers bumped by the one task that owns each field, read by
metrics and the admin API. Counting never awaits, so it cannot be torn by a
cancellation.
"""

from __future__ import annotations

from collections import Counter

import attrs


@attrs.define
class RoomCounters:
    """Running counts for one room since this process started."""

    records: int = 0
    """Raw records taken from sources by the normalizer."""
    events: int = 0
    """Typed events handed to the actor."""
    applied: int = 0
    """Events the actor applied (excluding duplicates)."""
    duplicates: int = 0
    """Events dropped because their msgId was already seen."""
    rejected: Counter[str] = attrs.field(factory=Counter)
    """Records or events refused, by reason (normalizer reasons, ``reducer_error``)."""
    unknown: Counter[str] = attrs.field(factory=Counter)
    """Envelopes of event types meksd does not handle, by type."""
    streaks_timed_out: int = 0
    """Streaks closed by ``streak_timeout_s`` for lack of an end event."""
    deltas: int = 0
    """Deltas published."""
    actor_restarts: int = 0
    """Times the actor failed and was restarted from its last good state."""
    ingest_peak: int = 0
    """Highest number of raw records seen waiting in the ingest channel."""
    last_event_at: float | None = None
    """``trio.current_time()`` of the last record received."""


@attrs.define
class DashboardTotals:
    """Running totals over every dashboard connection since this process started.

    Per-connection figures vanish with the connection; a metric counter must not go
    down, so the server keeps these.
    """

    lagged: Counter[str] = attrs.field(factory=Counter)
    """Times a dashboard fell off a room's ring and was resynced, by room."""
    snapshots: Counter[str] = attrs.field(factory=Counter)
    """Snapshots sent, by room."""
    killed: int = 0
    """Connections dropped because a send failed or timed out, or a pong never came."""
    messages_sent: int = 0
    """WebSocket messages sent to dashboards."""
    bytes_sent: int = 0
    """Payload bytes of those messages."""
