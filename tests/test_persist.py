"""The store's format: room state to bytes and back (meksd.core.persist)."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.core import persist
from meksd.core.commands import apply_command
from meksd.core.persist import FORMAT, PersistError, rebase_clock, state_from_bytes, state_to_bytes
from meksd.core.reduce import new_room, next_deadline, reduce
from meksd.model.commands import FlagChat, ResetSession
from meksd.model.events import ChatMessage, GiftSent, User
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
    assert doc["version"] == persist.VERSION == 2
    assert doc["seq"] == 3
    assert doc["state"]["room_id"] == "r"
    assert doc["state"]["dedup"] == {"capacity": 16, "segment": 0, "current": [], "sealed": []}


def test_lone_surrogates_from_a_feed_survive() -> None:
    """Text a feed sent that is not valid UTF-8 (a lone surrogate) is kept, escaped."""
    state = new_room("r", "e\ud800", CONFIG)
    data = state_to_bytes(state, 1)
    assert data.isascii()
    assert state_from_bytes(data)[0].epoch == "e\ud800"


@pytest.mark.parametrize("chunk", [1, 256])
def test_text_in_any_script_and_lone_surrogates_mix(chunk: int) -> None:
    """Non-ASCII text is written as UTF-8 (orjson) and a chunk holding a lone
    surrogate with ``\\u`` escapes (the stdlib's fallback), in the same document:
    both the whole document and the store's parts read back the same state."""
    state = new_room("r", "e", CONFIG)
    state, _ = reduce(
        state,
        [
            ChatMessage("m1", User("u1", "Zoë"), "héllo 🎁 你好", 0.0, 0),
            ChatMessage("m2", User("u2"), "broken \ud800 text", 0.0, 0),
            ChatMessage("m3", User("u3"), "plain", 0.0, 0),
        ],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(persist, "CHUNK", chunk)
        data = state_to_bytes(state, 4)
        parts = persist.state_to_parts(state, 4)
    # one item per chunk: only the item with the surrogate is escaped
    assert ("héllo 🎁 你好".encode() in data) == (chunk == 1)
    assert b"\\ud800" in data
    assert state_from_bytes(data) == (state, 4)
    disk = Disk()
    disk.apply(parts)
    assert disk.read() == (state, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[]", "expected a JSON object @ $"),
        (b'{"format": "other"}', "format is not 'meksd.room-state' @ $.format"),
        (b'{"format": "meksd.room-state", "version": 3}', "unsupported version 3"),
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


# --------------------------------------------------------------------------- store parts


class Disk:
    """What the store file holds of one room: a head and parts, changed as the store
    changes them (``meksd.runtime.storedb`` in a dict)."""

    def __init__(self) -> None:
        self.head = b""
        self.parts: dict[tuple[str, str], bytes] = {}
        self.written = 0

    def apply(self, write: persist.PartsWrite) -> None:
        if write.full:
            self.parts.clear()
        for gone in write.deletes:
            del self.parts[gone]  # a delete names a part that is there
            if gone[0] == "msgids":  # and takes the segment's pieces with it
                for piece in [
                    k for k in self.parts if k[0] == "msgids" and k[1].startswith(f"{gone[1]}.")
                ]:
                    del self.parts[piece]
        for kind, key, value in write.upserts:
            self.parts[kind, key] = value
            self.written += len(value)
        self.head = write.head

    def read(self) -> tuple[RoomState, int]:
        return persist.state_from_parts(self.head, [(*k, v) for k, v in self.parts.items()])


@PROPERTY
@given(room_scripts(), st.data())
def test_incremental_writes_hold_the_state_after_every_flush(
    script: list[Any], data: st.DataObject
) -> None:
    """Flushing after random steps, each write only the change from the previous one,
    the store holds exactly the state of that flush: every leaderboard row, streak
    (open, closed, pruned), remembered msgId (segments sealed and forgotten)."""
    state = new_room("r", "e0", CONFIG)
    disk = Disk()
    base: RoomState | None = None
    for n, step in enumerate(script):
        state, _ = run_script(state, [step])
        if step is script[-1] or data.draw(st.booleans(), label=f"flush after step {n}"):
            disk.apply(persist.state_to_parts(state, n, base=base))
            base = state
            assert disk.read() == (state, n)


def test_an_unchanged_room_writes_only_its_head() -> None:
    """A flush with nothing new writes no part; a sealed segment is written once; a
    segment opened since the last write is written whole."""
    state = new_room("r", "e0", RoomConfig(dedup_window=32))  # segments of 2 ids
    state, _ = reduce(state, [chat("m1"), chat("m2"), chat("m3")])
    first = persist.state_to_parts(state, 1)
    assert first.full
    assert {(k, key) for k, key, _ in first.upserts} == {("msgids", "0"), ("msgids", "1")}
    again = persist.state_to_parts(state, 1, base=state)
    assert (again.upserts, again.deletes, again.full) == ((), (), False)
    later, _ = reduce(state, [chat("m4")])
    step = persist.state_to_parts(later, 2, base=state)
    # segment 1 is sealed (written once more, complete, its pieces dropped), 2 opens
    assert sorted((k, key) for k, key, _ in step.upserts) == [("msgids", "1"), ("msgids", "2")]
    assert step.deletes == (("msgids", "1"),)


def test_the_open_segment_is_written_in_pieces_of_what_it_gained() -> None:
    """While the open segment fills, each write carries only the ids it gained since
    the last write (a piece ``N.M``); sealing writes it whole and drops the pieces;
    the store reads the same state back after every write."""
    state = new_room("r", "e0", RoomConfig(dedup_window=160))  # segments of 10 ids
    disk = Disk()
    disk.apply(persist.state_to_parts(state, 0))
    base, n = state, 0
    for batch in (["a1", "a2", "a3"], ["a4"], ["a5", "a6", "a7", "a8"]):
        n += 1
        state, _ = reduce(state, [chat(m) for m in batch])
        write = persist.state_to_parts(state, n, base=base)
        (piece,) = write.upserts
        kind, key, value = piece
        assert (kind, key) == ("msgids", f"0.{len(base.dedup.current)}")
        assert sorted(json.loads(value)) == batch
        assert write.deletes == ()
        disk.apply(write)
        assert disk.read() == (state, n)
        base = state
    assert sorted(k for k in disk.parts if k[0] == "msgids") == [
        ("msgids", "0"),
        ("msgids", "0.0"),
        ("msgids", "0.3"),
        ("msgids", "0.4"),
    ]
    state, _ = reduce(state, [chat("a9"), chat("a10"), chat("b1")])  # 0 sealed, 1 opens
    disk.apply(persist.state_to_parts(state, n + 1, base=base))
    assert sorted(k for k in disk.parts if k[0] == "msgids") == [("msgids", "0"), ("msgids", "1")]
    assert disk.read() == (state, n + 1)


def chat(msg_id: str) -> ChatMessage:
    return ChatMessage(msg_id, User("u"), "hi", 0.0, 0)


def test_streak_times_are_offset_only_in_what_is_written() -> None:
    """``offset`` moves the times written (unix seconds) without changing the state."""
    gift = GiftSent("g1", User("u"), "rose", "Rose", 1, 2, False, "grp", 1, 5.0, 0)
    state, _ = reduce(new_room("r", "e0", CONFIG), [gift])
    assert state.streaks
    disk = Disk()
    disk.apply(persist.state_to_parts(state, 1, offset=1000.0))
    assert disk.read() == (rebase_clock(state, 1000.0), 1)


def test_a_version_1_document_reads_as_one_sealed_segment() -> None:
    """A store row written by version 1 (a whole document, two generations of
    msgIds) still reads; ``previous`` becomes the one sealed segment."""
    state = new_room("r", "e0", CONFIG)
    doc = json.loads(state_to_bytes(state, 4))
    doc["version"] = 1
    doc["state"]["dedup"] = {"capacity": 16, "current": ["c"], "previous": ["a", "b"]}
    old, seq = persist.state_from_parts(json.dumps(doc).encode(), [])
    assert seq == 4
    assert (set(old.dedup.current), [set(s) for s in old.dedup.sealed]) == ({"c"}, [{"a", "b"}])
    assert old.dedup.segment == 1


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("leader", "u", b"{")], "part leader 'u': not JSON"),
        ([("nope", "u", b"{}")], "unknown part nope 'u'"),
        ([("msgids", "x", b"[]")], "unknown part msgids 'x'"),
        ([("msgids", "0.x", b"[]")], "unknown part msgids '0.x'"),
        ([("msgids", "0", b"[]"), ("msgids", "0.3", b"{}")], "'0.3': expected an array of msgIds"),
        ([("msgids", "0.3", b"[]")], "part msgids '0.3': a piece of segment 0, which is missing"),
        ([("msgids", "9", b"[]")], "part msgids 9 is newer than segment 0"),
        ([("leader", "u", b"{}")], "@ $.state.leaderboard[0]"),
        ([("msgids", "0", b"[1]")], "expected string @ current[0]"),
    ],
)
def test_parts_that_do_not_decode_are_refused_with_where(
    parts: list[persist.Part], message: str
) -> None:
    """A store row whose parts are damaged raises ``PersistError`` naming the part."""
    head = persist.state_to_parts(new_room("r", "e0", CONFIG), 0).head
    with pytest.raises(PersistError, match=re.escape(message)):
        persist.state_from_parts(head, parts)
