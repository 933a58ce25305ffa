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
    ingest_waits: int = 0
    """Times a source found the ingest channel full and waited (backpressure)."""
    ingest_wait_s: float = 0.0
    """Seconds sources spent waiting on the full ingest channel, in total."""
    failovers: int = 0
    """Switches from a failing or stalled source to the next one."""
    failbacks: int = 0
    """Switches back to a preferred source that delivers again."""
    stalls: int = 0
    """Times the active source stalled (no record for ``stall_s`` while live)."""
    standby_dropped: int = 0
    """Records read by a source that was not the active one, not forwarded."""
    last_event_at: float | None = None
    """``trio.current_time()`` of the last record received."""
    replies_sent: int = 0
    """Operator replies the upstream took."""
    replies_failed: Counter[str] = attrs.field(factory=Counter)
    """Operator replies settled as failed, by reason."""
    reply_attempts: int = 0
    """POSTs made for settled replies."""
    reply_settle_s: float = 0.0
    """Sum of the seconds from acceptance to settlement of settled replies."""


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
    refused: Counter[str] = attrs.field(factory=Counter)
    """Connections refused at the handshake (or by its timeout), by reason."""
    limited: Counter[str] = attrs.field(factory=Counter)
    """Limits hit by open connections (rate, size, auth, subscriptions...), by limit."""
    errors: int = 0
    """Connection handlers that failed with an unexpected exception (a bug: the
    connection was closed, nothing else was affected)."""
