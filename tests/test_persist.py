"""The store's format: room state to bytes and back (meksd.core.persist)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.core import persist
from meksd.core.commands import apply_command
from meksd.core.persist import FORMAT, PersistError, rebase_clock, state_from_bytes, state_to_bytes
from meksd.core.reduce import new_room, next_deadline
from meksd.model.commands import FlagChat, ResetSession
from meksd.model.state import RoomConfig, RoomState
from tests.strategies import PROPERTY, json_values, room_scripts, run_script, streak_scenarios

CONFIG = RoomConfig(chat_history=5, dedup_window=16, closed_streak_memory=8)
"""Small limits, so that generated scripts rotate the msgId memory and evict streaks."""


@st.composite
def room_states(draw: st.DrawFn) -> RoomState:
    """A room after a random script: leaderboard, streaks open and closed, battle, chat,
    rotated msgId memory, and sometimes operator commands (pins, a session reset)."""
    state = new_room("r", "e0", CONFIG)
    if draw(st.booleans()):
        state, _ = run_script(state, draw(room_scripts()))
    else:
        _, steps = draw(streak_scenarios())
        state, _ = run_script(state, steps[:-1])  # keep some streaks open
    for i, msg in enumerate(
        draw(st.lists(st.sampled_from([c.msg_id for c in state.chat] or ["x"]), max_size=2))
    ):
        state, _, _ = apply_command(state, FlagChat(f"c{i}", "chat.pin", msg), epoch="")
    if draw(st.booleans()):
        state, _, _ = apply_command(state, ResetSession("reset-1"), epoch="e1")
    return state


@PROPERTY
@given(room_states(), st.integers(min_value=0, max_value=2**53))
def test_round_trip_gives_the_same_state_and_seq(state: RoomState, seq: int) -> None:
    """Reading back what was written gives an equal state (every map, counter, streak
    and remembered msgId) and the same seq."""
    assert state_from_bytes(state_to_bytes(state, seq)) == (state, seq)


@PROPERTY
@given(room_states())
def test_the_encoding_is_canonical(state: RoomState) -> None:
    """Equal states give equal bytes: re-encoding a decoded document gives it back."""
    data = state_to_bytes(state, 7)
    assert state_to_bytes(*state_from_bytes(data)) == data
    rebuilt = attrs.evolve(
        state, leaderboard=type(state.leaderboard)(reversed(list(state.leaderboard.items())))
    )
    assert state_to_bytes(rebuilt, 7) == data


@PROPERTY
@given(room_states())
def test_chunked_encoding_gives_the_same_bytes(state: RoomState) -> None:
    """Encoding in pieces of 2 array items (instead of 256) changes no byte: the chunk
    boundaries of every array and map are exercised."""
    whole = state_to_bytes(state, 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(persist, "CHUNK", 2)
        assert state_to_bytes(state, 3) == whole


def test_the_document_is_versioned_json() -> None:
    """The document is one ASCII JSON object tagged with format and version."""
    state = new_room("r", "e", CONFIG)
    doc = json.loads(state_to_bytes(state, 3))
    assert doc["format"] == FORMAT
    assert doc["version"] == 1
    assert doc["seq"] == 3
    assert doc["state"]["room_id"] == "r"
    assert doc["state"]["dedup"] == {"capacity": 16, "current": [], "previous": []}


def test_lone_surrogates_from_a_feed_survive() -> None:
    """Text a feed sent that is not valid UTF-8 (a lone surrogate) is kept, as ASCII."""
    state = new_room("r", "e\ud800", CONFIG)
    data = state_to_bytes(state, 1)
    assert data.isascii()
    assert state_from_bytes(data)[0].epoch == "e\ud800"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "expected a JSON object @ $"),
        (b'{"format": "other"}', "format is not 'meksd.room-state' @ $.format"),
        (b'{"format": "meksd.room-state", "version": 2}', "unsupported version 2"),
        (b'{"format": "meksd.room-state", "version": 1, "seq": -1}', "@ $.seq"),
        (b'{"format": "meksd.room-state", "version": 1, "seq": 1}', "missing @ $.state"),
        (b'{"format": "meksd.room-state", "version": 1, "seq": 1, "x": 1}', "unknown key 'x'"),
    ],
)
def test_documents_that_are_not_a_state_are_refused_with_where(data: bytes, message: str) -> None:
    """A document of another format, version or shape is refused, saying what and where."""
    with pytest.raises(PersistError, match=message.replace("$", r"\$").replace(".", r"\.")):
        state_from_bytes(data)


def test_wrong_fields_are_named_by_path() -> None:
    """A state with wrong types names each problem with its $-path (up to five)."""
    doc = json.loads(state_to_bytes(new_room("r", "e", CONFIG), 1))
    doc["state"]["totals"]["diamonds"] = "5"
    doc["state"]["live"] = "gone"
    doc["state"]["leaderboard"] = [
        {"user_id": "u", "unique_id": "", "nickname": "", "diamonds": 1, "since": True}
    ]
    doc["state"]["dedup"]["current"] = ["a", 1]
    with pytest.raises(PersistError) as info:
        state_from_bytes(json.dumps(doc).encode())
    message = str(info.value)
    assert "expected int @ $.state.totals.diamonds" in message
    assert "expected one of 'live', 'paused', 'ended' @ $.state.live" in message
    assert "expected int @ $.state.leaderboard[0].since" in message
    assert "expected string @ current[1] @ $.state.dedup" in message


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:5]):
            out += _paths(v, (*prefix, i))
    return out


@PROPERTY
@given(room_states(), st.data())
def test_damaged_documents_raise_only_persist_error(state: RoomState, data: st.DataObject) -> None:
    """Replace any part of a valid document with any JSON: the result is either refused
    with a PersistError or a state that can be written again; nothing else escapes."""
    doc = json.loads(state_to_bytes(state, 5))
    path = data.draw(st.sampled_from(_paths(doc)[1:]))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    try:
        restored, seq = state_from_bytes(json.dumps(doc).encode())
    except PersistError:
        return
    state_to_bytes(restored, seq)


@PROPERTY
@given(st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_raise_only_persist_error(data: bytes) -> None:
    """Whatever the bytes, reading them raises PersistError or returns a state."""
    with contextlib.suppress(PersistError):
        state_from_bytes(data)


@PROPERTY
@given(room_states(), st.floats(min_value=-1e9, max_value=1e9))
def test_rebase_clock_moves_every_streak_time_and_nothing_else(
    state: RoomState, offset: float
) -> None:
    """A clock change moves each open and closed streak's last_at by the offset; the
    rest of the state is untouched, so deadlines move by the offset too."""
    moved = rebase_clock(state, offset)
    for before, after in (
        (state.streaks, moved.streaks),
        (state.closed_streaks, moved.closed_streaks),
    ):
        assert set(before.keys()) == set(after.keys())
        for key, streak in before.items():
            assert after[key] == attrs.evolve(streak, last_at=streak.last_at + offset)
    assert attrs.evolve(moved, streaks=state.streaks, closed_streaks=state.closed_streaks) == state
    deadline = next_deadline(state)
    if deadline is not None:
        assert next_deadline(moved) == pytest.approx(deadline + offset)
