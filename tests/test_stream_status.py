"""Stream end, pause and resume: what the feed says, what the room becomes, what
dashboards see."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from meksd.core.normalize import normalize
from meksd.core.reduce import new_room, reduce
from meksd.core.wire import apply_delta, delta_message, state_to_wire
from meksd.model.events import (
    ChatMessage,
    GiftSent,
    Rejected,
    StreamEnded,
    StreamPaused,
    StreamResumed,
    Unknown,
    User,
)
from meksd.model.raw import RawRecord
from meksd.model.state import RoomConfig, RoomState


def one(envelope: dict[str, Any]) -> object:
    [item] = normalize(RawRecord(orjson.dumps(envelope), 3.0, 4000))
    return item


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"event": "streamEnd"}, StreamEnded(None, 3.0, 4000)),
        ({"event": "liveEnd", "data": {"msgId": 9}}, StreamEnded("9", 3.0, 4000)),
        ({"event": "livePause"}, StreamPaused(None, 3.0, 4000)),
        ({"event": "liveUnpause"}, StreamResumed(None, 3.0, 4000)),
        ({"event": "controlMessage", "data": {"action": 1}}, StreamPaused(None, 3.0, 4000)),
        ({"event": "controlMessage", "data": {"action": 2}}, StreamResumed(None, 3.0, 4000)),
        ({"event": "controlMessage", "data": {"action": 3}}, StreamEnded(None, 3.0, 4000)),
        ({"event": "controlMessage", "data": {"action": 4}}, StreamEnded(None, 3.0, 4000)),
        (
            {"event": "controlMessage", "data": {"action": "CONTROL_ACTION_STREAM_PAUSED"}},
            StreamPaused(None, 3.0, 4000),
        ),
        (
            {"event": "controlMessage", "data": {"action": "unpaused"}},
            StreamResumed(None, 3.0, 4000),
        ),
        ({"event": "controlMessage", "data": {"action": 0}}, Unknown("controlMessage:other")),
        ({"event": "controlMessage", "data": {"action": 99}}, Unknown("controlMessage:other")),
        ({"event": "controlMessage", "data": {"action": "x"}}, Unknown("controlMessage:other")),
    ],
)
def test_feed_names_for_end_pause_and_resume(envelope: dict[str, Any], expected: object) -> None:
    """streamEnd/liveEnd, livePause/liveUnpause and controlMessage actions 1-4 (numbers
    or names) become the three stream events; other actions are unknown, not errors."""
    assert one(envelope) == expected


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        ({}, "missing_field", "missing action @ data.action"),
        ({"action": True}, "wrong_type", "expected int @ data.action, got bool"),
        ({"action": -1}, "bad_value", "expected int >= 0 @ data.action, got -1"),
        ({"action": 1.0}, "wrong_type", "expected int @ data.action, got float"),
    ],
)
def test_bad_control_messages_are_rejections_with_a_place(
    data: dict[str, Any], reason: str, detail: str
) -> None:
    """A controlMessage without a usable action is rejected, saying what and where."""
    assert one({"event": "controlMessage", "data": data}) == Rejected(
        reason, detail, "controlMessage"
    )


def room() -> RoomState:
    return new_room("r", "e1", RoomConfig())


USER = User("7", "seven", "Seven")


def chat(msg_id: str) -> ChatMessage:
    return ChatMessage(msg_id, USER, "hi", 1.0, 1000)


def gift(msg_id: str) -> GiftSent:
    return GiftSent(msg_id, USER, "1", "Rose", 0, 1, True, "", 1, 1.0, 1000)


def test_pause_holds_through_chat_and_gifts_until_resume_or_end() -> None:
    """Paused stays paused while viewers chat and gift; resume makes it live; a pause
    can end."""
    state, delta = reduce(room(), [StreamPaused(None, 1.0, 1000)])
    assert (state.live, delta.live) == ("paused", "paused")
    state, delta = reduce(state, [chat("c1"), gift("g1")])
    assert (state.live, delta.live) == ("paused", None)
    assert state.totals.comments == 1 and state.totals.diamonds == 1
    state, delta = reduce(state, [StreamResumed(None, 2.0, 2000)])
    assert (state.live, delta.live) == ("live", "live")
    state, _ = reduce(state, [StreamPaused(None, 3.0, 3000), StreamEnded(None, 3.0, 3000)])
    assert state.live == "ended"


def test_an_ended_stream_is_live_again_on_activity_not_on_resume_only() -> None:
    """After an end, a gift, chat or like means the stream is back; so does a resume."""
    state, _ = reduce(room(), [StreamEnded(None, 1.0, 1000)])
    state, delta = reduce(state, [chat("c1")])
    assert (state.live, delta.live) == ("live", "live")
    state, _ = reduce(state, [StreamEnded(None, 2.0, 2000), StreamResumed(None, 2.0, 2000)])
    assert state.live == "live"


def test_dashboards_see_paused_in_snapshots_and_deltas() -> None:
    """`live` is "paused" on the wire, and the reference client applies it."""
    before = room()
    state, delta = reduce(before, [StreamPaused(None, 1.0, 1000)])
    message = delta_message("r", "e1", 1, delta)
    assert message["live"] == "paused"
    assert state_to_wire(state)["live"] == "paused"
    assert apply_delta(state_to_wire(before), message) == state_to_wire(state)
