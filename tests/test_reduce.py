"""The room reducer: totals and leaderboard agree, duplicates change nothing, batching is free."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from meksd.core.delta import merge
from meksd.core.ranking import ranked
from meksd.core.reduce import expire, new_room, reduce
from meksd.model.events import (
    ChatMessage,
    Event,
    GiftSent,
    LikeReceived,
    MemberJoined,
    SocialAction,
    StreamEnded,
    User,
    ViewerCount,
)
from meksd.model.state import EMPTY_DELTA, RoomConfig, RoomState
from tests.strategies import PROPERTY, Batch, Step, events, room_scripts, run_script, stamp

A = User("u1", "alice", "Alice")
B = User("u2", "bob", "Bob")


def room(**config: Any) -> RoomState:
    return new_room("r", "e", RoomConfig(**config))


def single(msg: str, user: User, diamonds: int, count: int = 1) -> GiftSent:
    return GiftSent(msg, user, "lion", "Lion", 0, count, False, "", diamonds, 0.0, 0)


def chat(msg: str, text: str = "hi", user: User = A) -> ChatMessage:
    return ChatMessage(msg, user, text, 0.0, 0)


def without_counters(state: RoomState) -> RoomState:
    return attrs.evolve(state, duplicates=0)


def test_new_room_is_empty_and_live() -> None:
    """A new room is live with nothing counted and a dedup sized from config."""
    state = new_room("room", "ep", RoomConfig(dedup_window=100))
    assert (state.room_id, state.epoch, state.live) == ("room", "ep", "live")
    assert state.dedup.capacity == 100
    assert not state.leaderboard and state.totals.diamonds == 0


def test_empty_batch_changes_nothing() -> None:
    """reduce with no events returns the same state and the empty delta."""
    state = room()
    assert reduce(state, []) == (state, EMPTY_DELTA)


def test_leaderboard_rank_and_tie_break() -> None:
    """Rank is diamonds descending, then who reached the score first."""
    state, delta = reduce(
        room(), [single("1", A, 10), single("2", B, 10), single("3", A, 0, count=2)]
    )
    assert [r.user_id for r in ranked(state)] == ["u1", "u2"]
    state, _ = reduce(state, [single("4", A, 5), single("5", B, 5)])
    assert [(r.user_id, r.diamonds) for r in ranked(state)] == [("u1", 15), ("u2", 15)]
    assert state.leaderboard["u1"].since < state.leaderboard["u2"].since
    state, delta = reduce(state, [single("6", B, 1)])
    assert [r.user_id for r in ranked(state)] == ["u2", "u1"]
    assert delta.leaderboard == (state.leaderboard["u2"],)


def test_leaderboard_names_follow_latest_gift() -> None:
    """A row's unique_id and nickname follow the latest gift that carries them."""
    state, _ = reduce(room(), [single("1", A, 1)])
    renamed = User("u1", "alice2", "")
    state, _ = reduce(state, [single("2", renamed, 1)])
    row = state.leaderboard["u1"]
    assert (row.unique_id, row.nickname, row.diamonds) == ("alice2", "Alice", 2)


def test_delta_conflates_rows_and_itemizes_gifts() -> None:
    """A batch's delta has one row per changed gifter and every gift item in order."""
    _, delta = reduce(room(), [single("1", A, 1), single("2", B, 2), single("3", A, 3)])
    assert [(r.user_id, r.diamonds) for r in delta.leaderboard] == [("u1", 4), ("u2", 2)]
    assert [i.msg_id for i in delta.gifts] == ["1", "2", "3"]


def test_counters_likes_joins_follows_shares_viewers() -> None:
    """Likes, joins, follows, shares and comments add up; viewers is replaced."""
    batch: list[Event] = [
        LikeReceived(None, A, 10, 500, 0.0, 0),
        LikeReceived(None, B, 5, None, 0.0, 0),
        MemberJoined(None, A, 0.0, 0),
        SocialAction(None, A, "follow", 0.0, 0),
        SocialAction(None, B, "share", 0.0, 0),
        ViewerCount(None, 12, 0.0, 0),
        ViewerCount(None, 14, 0.0, 0),
        chat("c1"),
    ]
    state, delta = reduce(room(), batch)
    t = state.totals
    assert (t.likes, t.joins, t.follows, t.shares, t.comments) == (15, 1, 1, 1, 1)
    assert state.viewers == 14
    assert delta.viewers == 14 and delta.totals == t
    _, delta = reduce(state, [ViewerCount(None, 14, 0.0, 0)])
    assert delta.viewers is None and delta.totals is None
    assert state.events == len(batch)


def test_stream_end_and_resume() -> None:
    """streamEnd sets live to ended; a later gift, chat or like sets it live again."""
    state, delta = reduce(room(), [StreamEnded(None, 0.0, 0)])
    assert state.live == "ended" and delta.live == "ended"
    state, delta = reduce(state, [MemberJoined(None, A, 0.0, 0), ViewerCount(None, 3, 0.0, 0)])
    assert state.live == "ended" and delta.live is None
    state, delta = reduce(state, [chat("c")])
    assert state.live == "live" and delta.live == "live"


def test_chat_ring_keeps_the_last_messages() -> None:
    """The chat keeps the last chat_history messages; the delta itemizes all."""
    state = room(chat_history=3)
    state, delta = reduce(state, [chat(f"c{i}") for i in range(5)])
    assert [c.msg_id for c in state.chat] == ["c2", "c3", "c4"]
    assert len(delta.chat) == 5
    state, _ = reduce(state, [chat("c5")])
    assert [c.msg_id for c in state.chat] == ["c3", "c4", "c5"]


def test_duplicate_in_same_batch_is_dropped_and_counted() -> None:
    """A msgId repeated within one batch is applied once and counted as a duplicate."""
    state, delta = reduce(room(), [single("1", A, 10), single("1", A, 10), chat("1")])
    assert state.leaderboard["u1"].diamonds == 10
    assert (state.events, state.duplicates) == (1, 2)
    assert len(delta.gifts) == 1 and not delta.chat


def test_events_without_msg_id_are_not_deduplicated() -> None:
    """Events with no msgId (likes, viewer counts...) are always applied."""
    like = LikeReceived(None, A, 1, None, 0.0, 0)
    state, _ = reduce(room(), [like, like])
    assert state.totals.likes == 2 and state.duplicates == 0


@PROPERTY
@given(room_scripts())
def test_totals_equal_counted_gifts_and_leaderboard(steps: list[Step]) -> None:
    """totals.diamonds = sum of leaderboard rows = sum of counted gift items, always."""
    state = room()
    counted = 0
    for step in steps:
        state, deltas = run_script(state, [step])
        counted += sum(i.counted_diamonds for d in deltas for i in d.gifts)
        assert state.totals.diamonds == sum(r.diamonds for r in state.leaderboard.values())
        assert state.totals.diamonds == counted
        assert all(r.diamonds > 0 for r in state.leaderboard.values())
        assert not set(state.streaks) & set(state.closed_streaks)
        assert all(not s.closed for s in state.streaks.values())
    ranks = ranked(state)
    assert len({r.since for r in ranks}) == len(ranks)


@PROPERTY
@given(st.lists(events, max_size=25), st.data())
def test_repeated_msg_id_changes_nothing(batch: list[Event], data: st.DataObject) -> None:
    """Re-delivering events whose msgId was seen changes no state and no delta."""
    with_ids = [e for e in batch if e.msg_id is not None]
    state, _ = reduce(room(), with_ids)
    again = data.draw(st.lists(st.sampled_from(with_ids), max_size=10)) if with_ids else []
    after, delta = reduce(state, again)
    assert delta.empty
    assert without_counters(after) == without_counters(state)
    assert after.duplicates == state.duplicates + len(again)


@PROPERTY
@given(st.lists(events, max_size=30), st.data())
def test_batching_does_not_change_the_result(batch: list[Event], data: st.DataObject) -> None:
    """Reducing in one batch or split in two gives the same state and merged delta."""
    stamped = [stamp(e, 1.0) for e in batch]
    cut = data.draw(st.integers(0, len(stamped)))
    whole, delta = reduce(room(), stamped)
    first, d1 = reduce(room(), stamped[:cut])
    second, d2 = reduce(first, stamped[cut:])
    assert second == whole
    merged = merge(d1, d2)
    assert merged.gifts == delta.gifts and merged.chat == delta.chat
    assert {r.user_id: r for r in merged.leaderboard} == {r.user_id: r for r in delta.leaderboard}


def test_expire_with_nothing_due_returns_same_state() -> None:
    """expire returns the very same state when no streak is due (cheap to call)."""
    state, _ = reduce(room(), [chat("x")])
    assert expire(state, 10**9)[0] is state
    assert run_script(state, [Batch(())])[0] is state
