"""Counting gifts: streaks counted once, timeouts, late events, and the closed memory."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import immutables
from hypothesis import given

from meksd.core.gifts import prune_closed
from meksd.core.reduce import expire, new_room, next_deadline, reduce
from meksd.model.events import GiftKey, GiftSent, User
from meksd.model.state import RoomConfig, RoomState, Streak
from tests.strategies import PROPERTY, Step, StreakPlan, run_script, streak_scenarios

ALICE = User("u1", "alice", "Alice")
TIMEOUT = 15.0


def room(**config: Any) -> RoomState:
    return new_room("r", "e", RoomConfig(**config))


def gift(
    msg: str,
    count: int = 1,
    *,
    end: bool = False,
    streakable: bool = True,
    diamonds: int = 5,
    at: float = 0.0,
    group: str = "g",
    user: User = ALICE,
) -> GiftSent:
    return GiftSent(
        msg_id=msg,
        user=user,
        gift_id="rose",
        gift_name="Rose",
        gift_type=1 if streakable else 0,
        repeat_count=count,
        repeat_end=end,
        group_id=group,
        diamond_count=diamonds,
        received_at=at,
        wall_ms=int(at * 1000),
    )


def diamonds_of(state: RoomState, user_id: str = "u1") -> int:
    row = state.leaderboard.get(user_id)
    return 0 if row is None else row.diamonds


def test_single_streakable_gift_arrives_twice_and_counts_once() -> None:
    """A streakable gift sent once (progress 1, then end 1) counts once."""
    state, d1 = reduce(room(), [gift("a", 1)])
    assert diamonds_of(state) == 0
    assert [(i.streak, i.counted_diamonds) for i in d1.gifts] == [("progress", 0)]
    state, d2 = reduce(state, [gift("b", 1, end=True)])
    assert diamonds_of(state) == 5
    assert [(i.streak, i.counted_diamonds) for i in d2.gifts] == [("end", 5)]
    assert state.totals.gifts == 1
    assert not state.streaks


def test_streak_counts_highest_repeat_count_on_end() -> None:
    """A streak counts diamondCount x repeatCount once, on its end event."""
    events = [gift("a", 1), gift("b", 2), gift("c", 5), gift("d", 5, end=True)]
    state, delta = reduce(room(), events)
    assert diamonds_of(state) == 25
    assert state.totals == attrs.evolve(state.totals, diamonds=25, gifts=5)
    assert [i.streak for i in delta.gifts] == ["progress"] * 3 + ["end"]


def test_end_with_lower_count_than_progress_counts_the_highest() -> None:
    """An end event below the highest progress count counts the highest seen."""
    state, _ = reduce(room(), [gift("a", 7), gift("b", 4, end=True)])
    assert diamonds_of(state) == 35


def test_end_without_progress_counts_its_repeat_count() -> None:
    """An end event with no prior progress counts its own repeatCount."""
    state, delta = reduce(room(), [gift("a", 4, end=True)])
    assert diamonds_of(state) == 20
    assert delta.gifts[0].repeat_count == 4


def test_non_streakable_gift_counts_at_once() -> None:
    """A non-streakable gift counts diamondCount x repeatCount immediately."""
    state, delta = reduce(room(), [gift("a", 3, streakable=False, diamonds=100)])
    assert diamonds_of(state) == 300
    assert delta.gifts[0].streak == "single"
    assert not state.streaks


def test_zero_diamond_gift_counts_as_gift_but_makes_no_row() -> None:
    """A 0-diamond gift counts in totals.gifts but creates no leaderboard row."""
    state, delta = reduce(room(), [gift("a", 2, streakable=False, diamonds=0)])
    assert state.totals.gifts == 2
    assert not state.leaderboard
    assert delta.leaderboard == ()


def test_streak_times_out_and_counts_its_last_count() -> None:
    """A streak without an end is closed by expire with its last repeatCount."""
    state, _ = reduce(room(), [gift("a", 1, at=1.0), gift("b", 3, at=2.0)])
    assert next_deadline(state) == 2.0 + TIMEOUT
    same, delta = expire(state, 16.9)
    assert same is state
    assert delta.empty
    state, delta = expire(state, 17.0)
    assert diamonds_of(state) == 15
    assert [(i.streak, i.msg_id, i.counted_diamonds) for i in delta.gifts] == [
        ("timeout", "b:timeout", 15)
    ]
    assert state.streaks_timed_out == 1
    assert next_deadline(state) is None
    assert ("u1", "rose", "g") in state.closed_streaks


def test_late_end_after_timeout_counts_only_the_rest() -> None:
    """After a timeout, a late end counts only what was not yet counted (maybe 0)."""
    state, _ = reduce(room(), [gift("a", 3, at=0.0)])
    state, _ = expire(state, 20.0)
    assert diamonds_of(state) == 15
    state, delta = reduce(state, [gift("b", 3, end=True, at=21.0)])
    assert diamonds_of(state) == 15
    assert delta.gifts[0].counted_diamonds == 0
    state, delta = reduce(state, [gift("c", 5, end=True, at=22.0)])
    assert diamonds_of(state) == 25
    assert delta.gifts[0].counted_diamonds == 10


def test_progress_after_timeout_reopens_keeping_counted() -> None:
    """A higher progress count after a timeout re-opens the streak, keeping counted."""
    state, _ = reduce(room(), [gift("a", 2, at=0.0)])
    state, _ = expire(state, 15.0)
    state, _ = reduce(state, [gift("b", 1, at=16.0)])  # late, lower: changes nothing
    assert not state.streaks
    state, _ = reduce(state, [gift("c", 6, at=17.0)])
    assert state.streaks[("u1", "rose", "g")].counted == 2
    assert next_deadline(state) == 17.0 + TIMEOUT
    state, delta = expire(state, 40.0)
    assert diamonds_of(state) == 30
    assert delta.gifts[0].counted_diamonds == 20


def test_progress_after_end_does_not_count_again() -> None:
    """A progress event arriving after its streak's end neither opens nor counts."""
    state, _ = reduce(room(), [gift("z", 4, end=True, at=0.0), gift("a", 2, at=0.5)])
    assert not state.streaks
    state, _ = expire(state, 100.0)
    assert diamonds_of(state) == 20


def test_redelivered_end_with_new_msg_id_counts_zero() -> None:
    """A second end event for a counted streak (new msgId) adds nothing."""
    state, _ = reduce(room(), [gift("a", 2), gift("b", 2, end=True), gift("c", 2, end=True)])
    assert diamonds_of(state) == 10


def test_streaks_of_different_groups_are_separate() -> None:
    """Two streaks differing only in groupId are counted separately."""
    events = [gift("a", 2, end=True, group="1"), gift("b", 3, end=True, group="2")]
    state, _ = reduce(room(), events)
    assert diamonds_of(state) == 25


def test_closed_streak_memory_is_bounded() -> None:
    """Closed streaks beyond closed_streak_memory are forgotten, oldest first."""
    state = room(closed_streak_memory=16)
    for i in range(40):
        state, _ = reduce(state, [gift(f"m{i}", 1, end=True, group=str(i), at=float(i))])
    assert len(state.closed_streaks) <= 16
    remembered = {key[2] for key in state.closed_streaks}
    assert "39" in remembered
    assert "0" not in remembered


def test_expire_forgets_closed_streaks_after_ten_timeouts() -> None:
    """When expire closes a streak it also forgets closed ones idle for 10 timeouts."""
    state, _ = reduce(room(), [gift("a", 1, end=True, group="old", at=0.0)])
    state, _ = reduce(state, [gift("b", 1, group="new", at=200.0)])
    state, _ = expire(state, 215.0)
    assert set(state.closed_streaks) == {("u1", "rose", "new")}


def test_prune_closed_returns_the_same_map_when_nothing_goes() -> None:
    """prune_closed returns its argument unchanged when nothing is forgotten."""
    closed: immutables.Map[GiftKey, Streak] = immutables.Map()
    assert prune_closed(closed, memory=4, older_than=10.0) is closed


@PROPERTY
@given(streak_scenarios(timeout=TIMEOUT))
def test_streak_counts_exactly_once_however_it_arrives(
    scenario: tuple[list[StreakPlan], list[Step]],
) -> None:
    """Shuffled, re-delivered, batched, timed-out or late-ended: each streak counts once."""
    plans, steps = scenario
    state, deltas = run_script(room(streak_timeout_s=TIMEOUT), steps)
    expected: Counter[str] = Counter()
    for plan in plans:
        expected[plan.user.user_id] += plan.expected_diamonds
    assert {uid: row.diamonds for uid, row in state.leaderboard.items()} == {
        uid: d for uid, d in expected.items() if d
    }
    assert state.totals.diamonds == sum(p.expected_diamonds for p in plans)
    assert state.totals.gifts == sum(p.total for p in plans)
    assert not state.streaks
    counted = sum(item.counted_diamonds for d in deltas for item in d.gifts)
    assert counted == state.totals.diamonds
