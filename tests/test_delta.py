"""Merging deltas: one merged delta applies exactly like its parts in order."""

from __future__ import annotations

from functools import reduce as fold

from hypothesis import given
from hypothesis import strategies as st

from meksd.core.delta import merge
from meksd.core.reduce import new_room
from meksd.core.wire import apply_delta, delta_message, snapshot_message
from meksd.model.state import EMPTY_DELTA, Delta, LeaderRow, RoomConfig, Totals
from tests.strategies import PROPERTY, Step, room_scripts, run_script


def row(uid: str, diamonds: int, since: int) -> LeaderRow:
    return LeaderRow(uid, "", "", diamonds, since)


def test_merge_with_empty_is_identity() -> None:
    """Merging with the empty delta on either side gives the other delta."""
    delta = Delta(viewers=3)
    assert merge(EMPTY_DELTA, delta) is delta
    assert merge(delta, EMPTY_DELTA) is delta


def test_merge_conflates_rows_and_concatenates_items() -> None:
    """Rows: newer wins per user in first-change order; scalars: newer when set."""
    older = Delta(leaderboard=(row("a", 1, 1), row("b", 2, 2)), viewers=5, totals=Totals(1))
    newer = Delta(leaderboard=(row("c", 3, 3), row("a", 4, 4)), live="ended")
    merged = merge(older, newer)
    assert merged.leaderboard == (row("a", 4, 4), row("b", 2, 2), row("c", 3, 3))
    assert (merged.viewers, merged.live, merged.totals) == (5, "ended", Totals(1))
    assert not merged.battle_changed


def test_merge_keeps_battle_becoming_none() -> None:
    """A newer delta that cleared the battle wins over an older battle change."""
    merged = merge(Delta(battle_changed=True, battle=None), Delta(viewers=1))
    assert merged.battle_changed and merged.battle is None


@PROPERTY
@given(room_scripts(), st.data())
def test_merged_delta_applies_like_its_parts(steps: list[Step], data: st.DataObject) -> None:
    """apply(merge(a, b)) equals apply(a) then apply(b), for any consecutive deltas."""
    initial = new_room("r", "e", RoomConfig(chat_history=3))
    view = snapshot_message(initial, 0)["state"]
    _, deltas = run_script(initial, steps)
    cut = data.draw(st.integers(0, len(deltas)))
    a = fold(merge, deltas[:cut], EMPTY_DELTA)
    b = fold(merge, deltas[cut:], EMPTY_DELTA)
    one_by_one = view
    for delta in deltas:
        one_by_one = apply_delta(one_by_one, delta_message("r", "e", 1, delta))
    in_two = apply_delta(
        apply_delta(view, delta_message("r", "e", 1, a)), delta_message("r", "e", 2, b)
    )
    at_once = apply_delta(view, delta_message("r", "e", 1, merge(a, b)))
    assert one_by_one == in_two == at_once
