"""The replay playground: a feed through normalize and reduce, time from `ts`."""

from __future__ import annotations

from typing import Any

import orjson

from meksd.model.state import RoomConfig
from meksd.playground import format_report, replay_lines, report_to_json

USER = {"userId": "u1", "uniqueId": "ann", "nickname": "Ann"}
ROSE = {"giftId": 5655, "giftName": "Rose", "giftType": 1, "diamondCount": 1}


def line(ts: int | None, event: str, **data: Any) -> bytes:
    obj: dict[str, Any] = {"event": event, "data": data}
    if ts is not None:
        obj = {"ts": ts, **obj}
    return orjson.dumps(obj)


def rose(ts: int, msg_id: str, group: str, count: int, end: bool) -> bytes:
    return line(ts, "gift", **USER, **ROSE, msgId=msg_id, groupId=group,
                repeatCount=count, repeatEnd=end)  # fmt: skip


def test_streak_times_out_by_feed_time() -> None:
    """A streak idle longer than the timeout, by the lines' ts, is counted once."""
    report = replay_lines(
        [
            rose(0, "1", "g1", 3, False),
            rose(500, "2", "g1", 6, False),
            line(20_000, "chat", **USER, msgId="3", comment="hi"),
        ],
        config=RoomConfig(streak_timeout_s=15),
    )
    assert report.state.totals.diamonds == 6
    assert report.state.streaks_timed_out == 1
    assert report.pending == []


def test_open_streak_is_pending_not_counted() -> None:
    """A streak still open at the end of the feed is reported pending, not counted."""
    report = replay_lines([rose(0, "1", "g1", 2, False), rose(300, "2", "g1", 4, False)])
    assert report.state.totals.diamonds == 0
    assert [s.repeat_count for s in report.pending] == [4]
    assert "pending streaks (no end event yet, not counted): 1" in format_report(report)


def test_ended_streak_duplicates_and_rejections() -> None:
    """End events count, re-sent msgIds are dropped, bad lines are counted by reason."""
    report = replay_lines(
        [
            rose(0, "1", "g1", 1, False),
            rose(100, "2", "g1", 5, True),
            rose(100, "2", "g1", 5, True),
            b"",
            b"{nope",
            line(200, "mystery", msgId="9"),
            line(None, "chat", **USER, msgId="4", comment=5),
        ]
    )
    assert report.records == 6
    assert report.state.totals.diamonds == 5
    assert report.state.duplicates == 1
    assert report.rejections == {"not_json": 1, "wrong_type": 1}
    assert report.samples["not_json"].startswith("line 5: ")
    assert report.unknown == {"mystery": 1}
    data = report_to_json(report)
    assert data["state"]["leaderboard"][0]["diamonds"] == 5
    assert data["rejections"] == {"not_json": 1, "wrong_type": 1}
    text = format_report(report)
    assert "Ann (@ann)" in text
    assert "totals: diamonds 5 |" in text


def test_empty_feed() -> None:
    """An empty feed reports an empty room without failing."""
    report = replay_lines([])
    assert report.records == 0
    assert "(no diamonds counted)" in format_report(report)
