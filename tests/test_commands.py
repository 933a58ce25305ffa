"""Operator commands in the pure core: parsing, flags, pins, idempotency, session reset."""

from __future__ import annotations

import json
from functools import reduce as fold
from typing import Any

import attrs
from hypothesis import example, given
from hypothesis import strategies as st

from meksd.core.commands import apply_command, parse_command, recall
from meksd.core.delta import merge
from meksd.core.reduce import expire, new_room, reduce
from meksd.core.wire import apply_delta, delta_message, snapshot_message
from meksd.model.commands import CommandResult, FlagChat, ResetSession
from meksd.model.events import BattleStatus, ChatMessage, Event, GiftSent, User, ViewerCount
from meksd.model.state import EMPTY_DELTA, ChatUpdate, Delta, RoomConfig, RoomState
from tests.strategies import PROPERTY

ANN = User("1", "ann", "Ann")


def chat(msg_id: str, text: str = "hi") -> ChatMessage:
    return ChatMessage(msg_id, ANN, text, 0.0, 0)


def room(n_chat: int = 3, **config: Any) -> RoomState:
    state = new_room("r", "e1", RoomConfig(**config))
    state, _ = reduce(state, [chat(f"c{i}") for i in range(n_chat)])
    return state


def pin(cmd_id: str, msg_id: str, action: str = "chat.pin") -> FlagChat:
    parsed = parse_command(cmd_id, action, {"msg_id": msg_id})
    assert isinstance(parsed, FlagChat)
    return parsed


def view_of(state: RoomState) -> dict[str, Any]:
    return snapshot_message(state, 0)["state"]


def through_json(message: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(message))
    return loaded


# --- parsing --------------------------------------------------------------------


def test_parse_knows_every_action_and_says_what_is_wrong() -> None:
    """Known actions parse; an unknown action or a missing msg_id is a refusal with a code."""
    assert parse_command("1", "chat.hide", {"msg_id": "m"}) == FlagChat("1", "chat.hide", "m")
    assert parse_command("1", "chat.pin", {"msg_id": 42, "extra": 1}) == FlagChat(
        "1", "chat.pin", "42"
    )
    assert parse_command("2", "session.reset", {}) == ResetSession("2")
    unknown = parse_command("3", "chat.delete", {"msg_id": "m"})
    assert isinstance(unknown, CommandResult) and unknown.error == "unknown_action"
    for args in ({}, {"msg_id": ""}, {"msg_id": True}, {"msg_id": ["m"]}, {"msg_id": "x" * 200}):
        bad = parse_command("4", "chat.pin", args)
        assert isinstance(bad, CommandResult) and bad.error == "bad_args", args
        assert bad.message is not None and "args.msg_id" in bad.message


# --- chat flags -------------------------------------------------------------------


def test_pin_and_hide_flag_the_message_and_go_out_as_chat_updates() -> None:
    """A pin or hide sets the flag in state, and the delta carries a chat update a client applies."""
    state = room()
    view = view_of(state)
    for cmd, expected in [
        (pin("a", "c1"), ChatUpdate("c1", True, False)),
        (pin("b", "c1", "chat.hide"), ChatUpdate("c1", True, True)),
        (pin("c", "c1", "chat.unpin"), ChatUpdate("c1", False, True)),
        (pin("d", "c1", "chat.unhide"), ChatUpdate("c1", False, False)),
    ]:
        state, delta, result = apply_command(state, cmd, epoch="unused")
        assert result == CommandResult(True)
        assert delta == Delta(chat_updates=(expected,))
        item = next(c for c in state.chat if c.msg_id == "c1")
        assert (item.pinned, item.hidden) == (expected.pinned, expected.hidden)
        view = apply_delta(view, through_json(delta_message("r", "e1", 1, delta)))
        assert view == view_of(state)


def test_flagging_what_is_already_so_succeeds_without_a_delta() -> None:
    """Pinning a pinned message is ok and sends nothing."""
    state, _, _ = apply_command(room(), pin("a", "c0"), epoch="x")
    again, delta, result = apply_command(state, pin("b", "c0"), epoch="x")
    assert result.ok and delta.empty
    assert again.chat == state.chat


def test_unknown_message_is_refused_and_changes_nothing_else() -> None:
    """A msg_id not in the chat (never seen, or pushed out) is `unknown_message`."""
    state = room()
    after, delta, result = apply_command(state, pin("a", "nope"), epoch="x")
    assert result.error == "unknown_message" and not result.ok
    assert delta is EMPTY_DELTA
    assert after.chat == state.chat and after.leaderboard is state.leaderboard


def test_pinned_message_outlives_the_chat_window_until_unpinned() -> None:
    """A pinned message stays past chat_history; unpinning it then drops it, on server and client alike."""
    state = room(3, chat_history=3)
    view = view_of(state)
    state, delta, _ = apply_command(state, pin("p", "c0"), epoch="x")
    view = apply_delta(view, through_json(delta_message("r", "e1", 1, delta)))
    state, delta = reduce(state, [chat("n1"), chat("n2"), chat("n3"), chat("n4")])
    view = apply_delta(view, through_json(delta_message("r", "e1", 2, delta)))
    assert [c.msg_id for c in state.chat] == ["c0", "n2", "n3", "n4"]
    assert view == view_of(state)
    state, delta, _ = apply_command(state, pin("u", "c0", "chat.unpin"), epoch="x")
    view = apply_delta(view, through_json(delta_message("r", "e1", 3, delta)))
    assert [c.msg_id for c in state.chat] == ["n2", "n3", "n4"]
    assert view == view_of(state)


def test_pins_are_bounded() -> None:
    """At most chat_pins messages are pinned at once; the next pin is `too_many_pins`."""
    state = room(4, chat_pins=2)
    state, _, _ = apply_command(state, pin("a", "c0"), epoch="x")
    state, _, _ = apply_command(state, pin("b", "c1"), epoch="x")
    after, delta, result = apply_command(state, pin("c", "c2"), epoch="x")
    assert result.error == "too_many_pins" and delta.empty
    assert [c.pinned for c in after.chat] == [True, True, False, False]
    state, _, _ = apply_command(after, pin("d", "c0", "chat.unpin"), epoch="x")
    _, _, result = apply_command(state, pin("e", "c2"), epoch="x")
    assert result.ok


# --- idempotency -----------------------------------------------------------------------


def test_retried_id_gets_the_same_answer_and_is_not_applied_twice() -> None:
    """A retry of an applied id is answered `duplicate` with the same result and changes nothing."""
    state = room()
    state, _, first = apply_command(state, pin("cmd-1", "c1"), epoch="x")
    state, _, _ = apply_command(state, pin("cmd-2", "c1", "chat.unpin"), epoch="x")
    again, delta, retried = apply_command(state, pin("cmd-1", "c1"), epoch="x")
    assert retried == attrs.evolve(first, duplicate=True)
    assert again is state and delta is EMPTY_DELTA
    assert not next(c for c in again.chat if c.msg_id == "c1").pinned, "not pinned again"


def test_refusals_by_the_room_are_remembered_too() -> None:
    """A retried id whose command the room refused gets the same refusal."""
    state = room()
    state, _, first = apply_command(state, pin("cmd-1", "gone"), epoch="x")
    state, _ = reduce(state, [chat("gone")])
    _, _, retried = apply_command(state, pin("cmd-1", "gone"), epoch="x")
    assert first.error == retried.error == "unknown_message" and retried.duplicate


def test_an_id_reused_for_another_command_is_refused() -> None:
    """The same id with another action is `id_reused`, not mistaken for a retry."""
    state, _, _ = apply_command(room(), pin("cmd-1", "c1"), epoch="x")
    after, delta, result = apply_command(state, pin("cmd-1", "c2"), epoch="x")
    assert result.error == "id_reused" and after is state and delta.empty


def test_command_memory_is_bounded_and_forgets_the_oldest() -> None:
    """With command_memory=4, the last 2..4 ids are remembered; older ones are forgotten."""
    state = room(command_memory=4)
    for i in range(7):
        state, _, _ = apply_command(state, pin(f"id{i}", "c0"), epoch="x")
    remembered = [i for i in range(7) if recall(state.commands, f"id{i}") is not None]
    assert remembered[-1] == 6 and 2 <= len(remembered) <= 4
    assert remembered == list(range(7 - len(remembered), 7))


# --- session reset -------------------------------------------------------------------


def test_session_reset_starts_an_empty_session_in_a_new_epoch() -> None:
    """Reset: new epoch; leaderboard, totals and chat start again; viewers, battle and memories carry over."""
    state = room(2)
    state, _ = reduce(
        state,
        [
            GiftSent("g1", ANN, "1", "Rose", 0, 3, False, "", 10, 0.0, 0),
            ViewerCount(None, 120, 0.0, 0),
            BattleStatus(None, "b1", "active", (User("h1"), User("h2")), 300, 0.0, 0),
        ],
    )
    state, _, _ = apply_command(state, pin("p", "c0"), epoch="x")
    new, delta, result = apply_command(state, ResetSession("r1"), epoch="e2")
    assert result == CommandResult(True, epoch="e2") and delta.empty
    assert new.epoch == "e2" and new.room_id == "r"
    assert not new.leaderboard and new.totals.diamonds == 0 and new.chat == ()
    assert new.viewers == 120 and new.battle == state.battle and new.live == "live"
    assert new.dedup == state.dedup, "an old event re-delivered stays a duplicate"
    again, _ = reduce(new, [GiftSent("g1", ANN, "1", "Rose", 0, 3, False, "", 10, 0.0, 0)])
    assert again.totals.diamonds == 0
    retried, _, result2 = apply_command(new, ResetSession("r1"), epoch="e3")
    assert retried is new and result2 == CommandResult(True, epoch="e2", duplicate=True)
    _, _, pin_again = apply_command(new, pin("p", "c0"), epoch="x")
    assert pin_again.duplicate, "the command memory survived the reset"


def test_streak_open_across_a_reset_is_counted_once_in_the_new_session() -> None:
    """A streak running at reset time counts whole, once, in the session where it ends."""
    config = RoomConfig(streak_timeout_s=10)
    state = new_room("r", "e1", config)
    state, _ = reduce(state, [GiftSent("s1", ANN, "5", "Rose", 1, 1, False, "g", 1, 0.0, 0)])
    state, _ = reduce(state, [GiftSent("s2", ANN, "5", "Rose", 1, 2, False, "g", 1, 1.0, 0)])
    new, _, _ = apply_command(state, ResetSession("r"), epoch="e2")
    assert new.totals.diamonds == 0 and state.totals.diamonds == 0
    ended, _ = reduce(new, [GiftSent("s3", ANN, "5", "Rose", 1, 3, True, "g", 1, 2.0, 0)])
    assert ended.totals.diamonds == 3
    timed_out, _ = expire(new, 100.0)
    assert timed_out.totals.diamonds == 2, "or, without its end, by timeout in the new session"


# --- properties -------------------------------------------------------------------------

ops = st.one_of(
    st.integers(min_value=1, max_value=4).map(lambda n: ("chat", n)),
    st.tuples(
        st.sampled_from(["chat.pin", "chat.unpin", "chat.hide", "chat.unhide"]),
        st.integers(min_value=0, max_value=6),
        st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"]),
    ).map(lambda t: ("cmd", t)),
)
"""New chat messages, or a command on the message at some index of the chat (an
index past its end names a message that is not there)."""


def run_ops(state: RoomState, script: list[Any]) -> tuple[RoomState, list[Delta]]:
    deltas = []
    n = 0
    for kind, arg in script:
        if kind == "chat":
            state, delta = reduce(state, [chat(f"m{n + i}") for i in range(arg)])
            n += arg
        else:
            action, index, cmd_id = arg
            msg_id = state.chat[index].msg_id if index < len(state.chat) else "absent"
            state, delta, _ = apply_command(state, pin(cmd_id, msg_id, action), epoch="x")
        deltas.append(delta)
    return state, deltas


@PROPERTY
@given(
    st.lists(ops, max_size=25),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=3),
)
@example(
    [("chat", 2), ("cmd", ("chat.pin", 0, "k1")), ("chat", 3), ("cmd", ("chat.unpin", 0, "k2"))],
    2,
    2,
)
def test_snapshot_plus_deltas_equals_final_snapshot_with_commands(
    script: list[Any], history: int, pins: int
) -> None:
    """Chat and flag commands interleaved, deltas merged in any runs: the client view equals the server's."""
    start = new_room("r", "e", RoomConfig(chat_history=history, chat_pins=pins))
    final, deltas = run_ops(start, script)
    view = view_of(start)
    for delta in deltas:
        view = apply_delta(view, through_json(delta_message("r", "e", 1, delta)))
    assert view == view_of(final)
    assert len(final.chat) <= history + pins
    merged = fold(merge, deltas, EMPTY_DELTA)
    assert apply_delta(view_of(start), through_json(delta_message("r", "e", 1, merged))) == view
    halves = [fold(merge, deltas[: len(deltas) // 2], EMPTY_DELTA)]
    halves.append(fold(merge, deltas[len(deltas) // 2 :], EMPTY_DELTA))
    half_view = view_of(start)
    for delta in halves:
        half_view = apply_delta(half_view, through_json(delta_message("r", "e", 1, delta)))
    assert half_view == view


def test_merge_folds_an_update_into_a_message_new_in_the_older_delta() -> None:
    """A message that arrives and is pinned within one tick goes out once, already pinned."""
    state = new_room("r", "e", RoomConfig())
    state, first = reduce(state, [chat("m")])
    state, second, _ = apply_command(state, pin("p", "m"), epoch="x")
    merged = merge(first, second)
    assert merged.chat_updates == ()
    assert [(c.msg_id, c.pinned) for c in merged.chat] == [("m", True)]


def test_reducer_events_never_carry_chat_updates() -> None:
    """Only commands produce chat updates; a chat event is a new item."""
    events: list[Event] = [chat("a"), chat("b")]
    _, delta = reduce(new_room("r", "e", RoomConfig()), events)
    assert delta.chat_updates == () and len(delta.chat) == 2
