"""Battles: status from linkMicBattle, points only from linkMicArmies, winner on end."""

from __future__ import annotations

from typing import Literal

from meksd.core.reduce import new_room, reduce
from meksd.model.events import Army, BattleArmies, BattleStatus, GiftSent, Supporter, User
from meksd.model.state import BattleHost, RoomConfig, RoomState

H1 = User("h1", "host1", "Host 1")
H2 = User("h2", "host2", "Host 2")


def room(supporters: int = 5) -> RoomState:
    return new_room("r", "e", RoomConfig(battle_supporters=supporters))


def status(
    battle_id: str, state: Literal["active", "ended"], *hosts: User, wall_ms: int = 1000
) -> BattleStatus:
    return BattleStatus(None, battle_id, state, hosts, 300, 0.0, wall_ms)


def armies(battle_id: str, *entries: Army) -> BattleArmies:
    return BattleArmies(None, battle_id, entries, 0.0, 2000)


def fan(uid: str, score: int) -> Supporter:
    return Supporter(User(uid, uid, uid.upper()), score)


def test_battle_starts_with_hosts_at_zero() -> None:
    """An active linkMicBattle starts a battle with its hosts at score 0."""
    state, delta = reduce(room(), [status("b1", "active", H1, H2)])
    battle = state.battle
    assert battle is not None
    assert (battle.battle_id, battle.status, battle.started_wall_ms) == ("b1", "active", 1000)
    assert battle.hosts == (
        BattleHost("h1", "host1", "Host 1"),
        BattleHost("h2", "host2", "Host 2"),
    )
    assert delta.battle_changed and delta.battle == battle


def test_armies_set_scores_and_top_supporters() -> None:
    """Armies replace host scores and keep each host's top supporters, best first."""
    state, _ = reduce(room(supporters=2), [status("b1", "active", H1, H2)])
    state, _ = reduce(
        state,
        [armies("b1", Army("h1", 50, (fan("a", 10), fan("b", 30), fan("c", 20), fan("b", 5))))],
    )
    battle = state.battle
    assert battle is not None
    assert [(h.user_id, h.score) for h in battle.hosts] == [("h1", 50), ("h2", 0)]
    ((host, top),) = battle.supporters
    assert host == "h1"
    assert [(s.user_id, s.score) for s in top] == [("b", 30), ("c", 20)]


def test_gifts_never_change_battle_points() -> None:
    """Gifts during a battle add diamonds to the leaderboard, never battle points."""
    state, _ = reduce(room(), [status("b1", "active", H1, H2)])
    gift = GiftSent("g", User("fan"), "lion", "Lion", 0, 1, False, "", 29999, 0.0, 0)
    state, delta = reduce(state, [gift])
    assert state.battle is not None
    assert all(h.score == 0 for h in state.battle.hosts)
    assert not delta.battle_changed


def test_battle_end_picks_the_winner() -> None:
    """An ended battle's winner is the host with the highest score."""
    state, _ = reduce(
        room(),
        [status("b1", "active", H1, H2), armies("b1", Army("h1", 5), Army("h2", 9))],
    )
    state, _ = reduce(state, [status("b1", "ended")])
    assert state.battle is not None
    assert (state.battle.status, state.battle.winner) == ("ended", "h2")


def test_tied_battle_is_a_draw() -> None:
    """An ended battle whose top score is shared is a draw."""
    state, _ = reduce(
        room(),
        [
            status("b1", "active", H1, H2),
            armies("b1", Army("h1", 7), Army("h2", 7)),
            status("b1", "ended"),
        ],
    )
    assert state.battle is not None and state.battle.winner == "draw"


def test_armies_for_unknown_battle_start_it() -> None:
    """Armies for a battle never announced start an active battle with those hosts."""
    state, _ = reduce(room(), [armies("b9", Army("h1", 3), Army("h2", 4))])
    battle = state.battle
    assert battle is not None
    assert (battle.battle_id, battle.status) == ("b9", "active")
    assert [(h.user_id, h.score) for h in battle.hosts] == [("h1", 3), ("h2", 4)]


def test_end_of_unknown_battle_has_no_winner_until_armies() -> None:
    """Ending a battle never seen records it ended with winner unknown (None)."""
    state, _ = reduce(room(), [status("b2", "ended", H1, H2)])
    assert state.battle is not None
    assert (state.battle.status, state.battle.winner) == ("ended", None)
    state, _ = reduce(state, [armies("b2", Army("h1", 10), Army("h2", 1))])
    assert state.battle is not None and state.battle.winner == "h1"


def test_late_active_message_does_not_restart_ended_battle() -> None:
    """An active message for a battle already ended is ignored."""
    state, _ = reduce(room(), [status("b1", "active", H1), status("b1", "ended")])
    before = state.battle
    state, delta = reduce(state, [status("b1", "active", H1)])
    assert state.battle == before and not delta.battle_changed


def test_new_battle_replaces_the_last_one() -> None:
    """A new battle id replaces the previous battle and its scores."""
    state, _ = reduce(
        room(), [status("b1", "active", H1, H2), armies("b1", Army("h1", 5)), status("b1", "ended")]
    )
    state, _ = reduce(state, [status("b2", "active", H2, H1, wall_ms=5000)])
    battle = state.battle
    assert battle is not None
    assert (battle.battle_id, battle.started_wall_ms, battle.winner) == ("b2", 5000, None)
    assert [(h.user_id, h.score) for h in battle.hosts] == [("h2", 0), ("h1", 0)]


def test_status_update_keeps_scores_and_updates_names() -> None:
    """A repeated active message keeps scores and takes newer host names."""
    state, _ = reduce(room(), [status("b1", "active", H1), armies("b1", Army("h1", 8))])
    renamed = User("h1", "", "New Name")
    state, _ = reduce(state, [status("b1", "active", renamed, H2)])
    assert state.battle is not None
    assert state.battle.hosts == (
        BattleHost("h1", "host1", "New Name", 8),
        BattleHost("h2", "host2", "Host 2", 0),
    )
