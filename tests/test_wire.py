"""Wire shapes: snapshots and deltas a dashboard can follow to the exact state."""

from __future__ import annotations

import copy
import json

from hypothesis import given

from meksd.core.reduce import new_room, reduce
from meksd.core.wire import apply_delta, delta_message, snapshot_message
from meksd.model.events import Army, BattleArmies, BattleStatus, ChatMessage, GiftSent, User
from meksd.model.state import EMPTY_DELTA, RoomConfig, RoomState
from tests.strategies import PROPERTY, Step, room_scripts, run_script


def follow(initial: RoomState, steps: list[Step]) -> tuple[dict[str, object], RoomState]:
    """What a dashboard holds after a snapshot of ``initial`` and every delta."""
    view = snapshot_message(initial, 0)["state"]
    state, deltas = run_script(initial, steps)
    for seq, delta in enumerate(deltas, start=1):
        message = delta_message(state.room_id, state.epoch, seq, delta)
        message = json.loads(json.dumps(message))  # through JSON, as a dashboard gets it
        view = apply_delta(view, message)
    return view, state


@PROPERTY
@given(room_scripts())
def test_deltas_applied_to_snapshot_give_final_snapshot(steps: list[Step]) -> None:
    """Any events, any batching: snapshot + every delta = the final snapshot's state."""
    initial = new_room("r", "e", RoomConfig(chat_history=3))
    view, final = follow(initial, steps)
    assert view == snapshot_message(final, 99)["state"]


@PROPERTY
@given(room_scripts(), room_scripts())
def test_following_from_a_mid_stream_snapshot(first: list[Step], rest: list[Step]) -> None:
    """A dashboard joining mid-stream from a snapshot converges to the same state."""
    middle, _ = run_script(new_room("r", "e", RoomConfig(chat_history=4)), first)
    view, final = follow(middle, rest)
    assert view == snapshot_message(final, 1)["state"]


def test_snapshot_shape() -> None:
    """A snapshot carries room, epoch, seq and the whole state with string IDs."""
    state = new_room("room-1", "ep-1", RoomConfig(chat_history=10))
    state, _ = reduce(
        state,
        [
            GiftSent("m1", User("7", "a", "A"), "5655", "Rose", 0, 2, False, "", 1, 0.0, 100),
            ChatMessage("m2", User("8", "b", "B"), "hello", 0.0, 200),
            BattleStatus(None, "b1", "active", (User("h1"), User("h2")), 300, 0.0, 300),
            BattleArmies(None, "b1", (Army("h1", 4),), 0.0, 400),
        ],
    )
    assert snapshot_message(state, 5) == {
        "type": "snapshot",
        "room": "room-1",
        "epoch": "ep-1",
        "seq": 5,
        "state": {
            "leaderboard": [
                {"user_id": "7", "unique_id": "a", "nickname": "A", "diamonds": 2, "since": 1}
            ],
            "totals": {
                "diamonds": 2,
                "gifts": 2,
                "likes": 0,
                "comments": 1,
                "joins": 0,
                "follows": 0,
                "shares": 0,
            },
            "viewers": 0,
            "battle": {
                "battle_id": "b1",
                "status": "active",
                "hosts": [
                    {"user_id": "h1", "unique_id": "", "nickname": "", "score": 4},
                    {"user_id": "h2", "unique_id": "", "nickname": "", "score": 0},
                ],
                "supporters": {},
                "started_wall_ms": 300,
                "duration_s": 300,
                "winner": None,
            },
            "chat": [
                {
                    "msg_id": "m2",
                    "user_id": "8",
                    "unique_id": "b",
                    "nickname": "B",
                    "comment": "hello",
                    "wall_ms": 200,
                    "pinned": False,
                    "hidden": False,
                }
            ],
            "chat_limit": 10,
            "live": "live",
        },
    }


def test_delta_message_has_only_changed_keys() -> None:
    """A delta message carries only the keys that changed, gift items in full."""
    state = new_room("r", "e", RoomConfig())
    _, delta = reduce(
        state,
        [GiftSent("m1", User("7", "a", "A"), "5655", "Rose", 1, 1, False, "g", 1, 0.0, 100)],
    )
    assert delta_message("r", "e", 3, delta) == {
        "type": "delta",
        "room": "r",
        "epoch": "e",
        "seq": 3,
        "gifts": [
            {
                "msg_id": "m1",
                "user_id": "7",
                "unique_id": "a",
                "nickname": "A",
                "gift_id": "5655",
                "gift_name": "Rose",
                "diamond_count": 1,
                "repeat_count": 1,
                "streak": "progress",
                "counted_diamonds": 0,
                "wall_ms": 100,
            }
        ],
    }
    assert delta_message("r", "e", 4, EMPTY_DELTA) == {
        "type": "delta",
        "room": "r",
        "epoch": "e",
        "seq": 4,
    }


def test_apply_delta_does_not_touch_its_arguments() -> None:
    """apply_delta returns a new view and leaves the view and message as they were."""
    state = new_room("r", "e", RoomConfig(chat_history=1))
    view = snapshot_message(state, 0)["state"]
    _, delta = reduce(
        state,
        [
            GiftSent("m1", User("7"), "x", "", 0, 1, False, "", 3, 0.0, 0),
            ChatMessage("c1", User("7"), "a", 0.0, 0),
            ChatMessage("c2", User("7"), "b", 0.0, 0),
        ],
    )
    message = delta_message("r", "e", 1, delta)
    view_before, message_before = copy.deepcopy(view), copy.deepcopy(message)
    new = apply_delta(view, message)
    assert view == view_before and message == message_before
    assert [c["msg_id"] for c in new["chat"]] == ["c2"]
    assert new["leaderboard"][0]["diamonds"] == 3
