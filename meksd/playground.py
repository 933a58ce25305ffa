"""``meksd replay``: a feed file through the pure core, no event loop, no clock.

Each non-blank line of a JSONL feed is one raw record. Time comes from the lines'
``ts`` field (unix ms): before a line is applied, streaks idle for longer than the
streak timeout *at that line's time* are closed (``expire``), exactly as the live
actor would have done between records. A line without ``ts`` happens at the time of
the previous one. At the end of the file nothing is expired: streaks still open are
reported as *pending, not counted*, because a live room would still be waiting for
their end events.

This is the playground for checking what meksd makes of a recorded or hand-written
feed: the leaderboard, the totals, what was rejected and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs

from meksd.config import RoomSettings
from meksd.core.normalize import normalize
from meksd.core.reduce import expire, new_room, reduce
from meksd.core.wire import ranked, snapshot_message
from meksd.model.events import Event, Rejected, Unknown
from meksd.model.raw import RawRecord
from meksd.model.state import RoomConfig, RoomState, Streak
from meksd.runtime.sources.replay import line_ts

__all__ = ["ReplayReport", "format_report", "replay_lines", "report_to_json"]


@attrs.frozen
class ReplayReport:
    """What replaying a feed produced."""

    state: RoomState
    """The room after the last line (open streaks not expired)."""
    records: int
    """Non-blank lines read."""
    events: int
    """Typed events handed to the reducer (duplicates included)."""
    rejections: dict[str, int]
    """Rejected envelopes (or whole records) per reason; ``reducer_error`` counts
    events of a batch the reducer refused."""
    samples: dict[str, str]
    """Per rejection reason, the first occurrence: ``line N: detail``."""
    unknown: dict[str, int]
    """Envelopes of event types meksd does not handle, per type."""

    @property
    def pending(self) -> list[Streak]:
        """Streaks still open at the end: shown live, not counted."""
        return sorted(self.state.streaks.values(), key=lambda s: s.last_at)


def replay_lines(
    lines: Iterable[bytes],
    *,
    room_id: str = "replay",
    config: RoomConfig | None = None,
    max_record_bytes: int = RoomSettings(id="replay").max_record_bytes,
) -> ReplayReport:
    """Normalize and reduce every line of a feed; see the module docstring."""
    state = new_room(room_id, "replay", config if config is not None else RoomConfig())
    now = 0.0
    wall_ms = 0
    records = events_fed = 0
    rejections: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for number, raw_line in enumerate(lines, 1):
        line = raw_line.strip()
        if not line:
            continue
        records += 1
        ts = line_ts(line)
        if ts is not None:
            now = max(now, ts / 1000.0)
            wall_ms = int(ts)
        state, _ = expire(state, now)
        events: list[Event] = []
        for item in normalize(RawRecord(line, now, wall_ms, "replay"), max_bytes=max_record_bytes):
            if isinstance(item, Rejected):
                rejections[item.reason] += 1
                samples.setdefault(item.reason, f"line {number}: {item.detail}")
            elif isinstance(item, Unknown):
                unknown[item.event_type] += 1
            else:
                events.append(item)
        if not events:
            continue
        try:
            state, _ = reduce(state, events)
        except Exception as exc:  # the live actor keeps the old state too
            rejections["reducer_error"] += len(events)
            samples.setdefault("reducer_error", f"line {number}: {type(exc).__name__}: {exc}")
        else:
            events_fed += len(events)
    return ReplayReport(
        state=state,
        records=records,
        events=events_fed,
        rejections=dict(rejections),
        samples=samples,
        unknown=dict(unknown),
    )


def report_to_json(report: ReplayReport) -> dict[str, Any]:
    """The report as JSON-ready data; ``state`` is a snapshot message's ``state``."""
    state = report.state
    return {
        "room": state.room_id,
        "records": report.records,
        "events": report.events,
        "applied": state.events,
        "duplicates": state.duplicates,
        "streaks_timed_out": state.streaks_timed_out,
        "rejections": report.rejections,
        "rejection_samples": report.samples,
        "unknown": report.unknown,
        "pending_streaks": [
            {
                "user_id": s.user.user_id,
                "unique_id": s.user.unique_id,
                "nickname": s.user.nickname,
                "gift_id": s.gift_id,
                "gift_name": s.gift_name,
                "group_id": s.group_id,
                "repeat_count": s.repeat_count,
                "diamonds": s.diamond_count * s.repeat_count,
            }
            for s in report.pending
        ],
        "state": snapshot_message(state, seq=0)["state"],
    }


def format_report(report: ReplayReport, *, top: int = 20) -> str:
    """The report as a readable text table (``top`` leaderboard rows; 0 for all)."""
    state = report.state
    out: list[str] = []
    rejected = sum(report.rejections.values())
    out.append(
        f"room {state.room_id}: {report.records} records, {report.events} events "
        f"({state.duplicates} duplicates dropped), {rejected} rejected, "
        f"{sum(report.unknown.values())} of unknown type"
    )
    out.append("")
    rows = ranked(state)
    shown = rows if top <= 0 else rows[:top]
    out.append(f"{'rank':>4}  {'diamonds':>10}  gifter")
    for rank, row in enumerate(shown, 1):
        out.append(f"{rank:>4}  {row.diamonds:>10,}  {_who(row.nickname, row.unique_id)}")
    if not rows:
        out.append("        (no diamonds counted)")
    elif len(rows) > len(shown):
        out.append(f"        ... {len(rows) - len(shown)} more gifters")
    out.append("")
    t = state.totals
    out.append(
        f"totals: diamonds {t.diamonds:,} | gifts {t.gifts:,} | likes {t.likes:,} | "
        f"comments {t.comments:,} | joins {t.joins:,} | follows {t.follows:,} | "
        f"shares {t.shares:,} | viewers {state.viewers:,} | {state.live}"
    )
    out.append(f"streaks closed by timeout: {state.streaks_timed_out}")
    battle = state.battle
    if battle is not None:
        scores = ", ".join(f"{_who(h.nickname, h.unique_id)} {h.score:,}" for h in battle.hosts)
        names = {h.user_id: _who(h.nickname, h.unique_id) for h in battle.hosts}
        winner = f", winner {names.get(battle.winner, battle.winner)}" if battle.winner else ""
        out.append(f"battle {battle.battle_id}: {battle.status}{winner}; {scores}")
    pending = report.pending
    if pending:
        out.append("")
        out.append(f"pending streaks (no end event yet, not counted): {len(pending)}")
        for s in pending:
            out.append(
                f"  {_who(s.user.nickname, s.user.unique_id)}: {s.gift_name} x{s.repeat_count}"
                f" ({s.diamond_count * s.repeat_count:,} diamonds)"
            )
    if report.rejections:
        out.append("")
        out.append("rejected, by reason:")
        for reason, count in sorted(report.rejections.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {reason:<20} {count:>6}  first: {report.samples.get(reason, '')}")
    if report.unknown:
        out.append("")
        out.append("unknown event types (ignored):")
        for event_type, count in sorted(report.unknown.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {event_type:<20} {count:>6}")
    return "\n".join(out)


def _who(nickname: str, unique_id: str) -> str:
    if nickname and unique_id:
        return f"{nickname} (@{unique_id})"
    return nickname or (f"@{unique_id}" if unique_id else "?")
