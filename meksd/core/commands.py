"""Operator commands: parse one, apply it to a room's state. Pure.

``apply_command(state, command, epoch=...) -> (state, delta, result)`` is the
command counterpart of :func:`meksd.core.reduce.reduce`: synchronous, no clock, no
I/O; the actor calls it in the same synchronous step as it swaps the state in, so a
command is applied once or not at all.

Decisions:

* **Idempotent by id.** The room remembers each applied command id with its result
  (:class:`~meksd.model.commands.CommandMemory`, bounded). A command whose id is
  remembered changes nothing and gets the remembered result again, marked
  ``duplicate``; if the same id comes with a different action or message, the answer
  is ``id_reused`` (a client bug, not a retry). Answers decided here (applied, or
  refused because of the state: ``unknown_message``, ``too_many_pins``) are
  remembered; refusals decided before the actor (``forbidden``, ``bad_args``,
  ``timeout``...) are not, since the command never reached the room.
* **Flags, not deletions.** ``chat.pin`` / ``chat.hide`` set flags on a message still
  in the room's chat; the change goes out as a ``chat_updates`` entry. Re-pinning a
  pinned message is a success with no delta. A pinned message stays in the chat
  after newer messages push it past ``chat_history`` (at most ``chat_pins`` are
  pinned at once); unpinning such a message drops it.
* **chat.reply** adds a ``pending`` reply with a server-assigned ``reply_id``
  (:mod:`meksd.core.replies`; the ack carries it); its text is checked here, against
  ``RoomConfig.max_reply_chars``, so such a refusal is remembered like the others
  decided by the room. Delivery is the shell's (``docs/replies.md``).
* **session.reset** starts a new epoch with an empty session: leaderboard, totals,
  chat and the gift tie-break order start again. What describes the stream *now*
  carries over: viewers, live status, the battle, open and recently closed streaks
  (a streak is counted once, in the session where it closes), the msgId memory (a
  re-delivered old event stays a duplicate) and the command memory (a retried reset
  is not a second reset). The old state is the caller's to keep: the actor hands
  it to the room (``Room.previous``) and its session-end hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import immutables

from meksd.core.chat import trim_ring
from meksd.core.reduce import new_room
from meksd.core.replies import accept_reply, check_reply_text
from meksd.model.commands import (
    ACTIONS,
    CHAT_ACTIONS,
    CommandMemory,
    CommandResult,
    FlagChat,
    OperatorCommand,
    Remembered,
    ResetSession,
    SendReply,
)
from meksd.model.state import EMPTY_DELTA, ChatUpdate, Delta, RoomState

__all__ = [
    "ACTIONS",
    "apply_command",
    "fingerprint",
    "parse_command",
    "recall",
    "remember",
    "start_session",
]

MAX_MSG_ID_LEN = 128


def parse_command(
    cmd_id: str, action: str, args: Mapping[str, Any]
) -> OperatorCommand | CommandResult:
    """The command ``action`` with ``args`` describes, or a refusal saying why not.

    Unknown keys in ``args`` are ignored (as unknown fields are everywhere in v1).
    A ``msg_id`` may be a string or an integer (feeds send both); it is a string
    from here on.
    """
    if action in CHAT_ACTIONS:
        msg_id = args.get("msg_id")
        if isinstance(msg_id, int) and not isinstance(msg_id, bool):
            msg_id = str(msg_id)
        if not isinstance(msg_id, str) or not 1 <= len(msg_id) <= MAX_MSG_ID_LEN:
            return CommandResult(
                False, "bad_args", f"expected string of 1..{MAX_MSG_ID_LEN} @ args.msg_id"
            )
        for known in CHAT_ACTIONS:  # narrow `action` to the literal type
            if action == known:
                return FlagChat(cmd_id, known, msg_id)
    if action == "session.reset":
        return ResetSession(cmd_id)
    if action == "chat.reply":
        text = args.get("text")
        if not isinstance(text, str):
            return CommandResult(False, "bad_args", "expected string @ args.text")
        return SendReply(cmd_id, text)
    return CommandResult(
        False,
        "unknown_action",
        f"unknown action {action[:40]!r} (known: {', '.join(ACTIONS)})",
    )


def fingerprint(command: OperatorCommand) -> str:
    """What a command does, to tell a retry (same) from a reused id (different)."""
    if isinstance(command, FlagChat):
        return f"{command.action} {command.msg_id}"
    if isinstance(command, SendReply):
        return f"{command.action} {command.text}"
    return command.action


def recall(memory: CommandMemory, cmd_id: str) -> Remembered | None:
    """The remembered answer to ``cmd_id``, if any."""
    found = memory.current.get(cmd_id)
    return found if found is not None else memory.previous.get(cmd_id)


def remember(memory: CommandMemory, cmd_id: str, entry: Remembered) -> CommandMemory:
    """``memory`` with ``cmd_id`` added, rotating generations when ``current`` is full."""
    current = memory.current.set(cmd_id, entry)
    if len(current) < max(1, memory.capacity // 2):
        return attrs.evolve(memory, current=current)
    return CommandMemory(capacity=memory.capacity, current=immutables.Map(), previous=current)


def apply_command(
    state: RoomState, command: OperatorCommand, *, epoch: str
) -> tuple[RoomState, Delta, CommandResult]:
    """Apply ``command``; the new state, what changed, and the answer for its ``ack``.

    ``epoch`` is the epoch a ``session.reset`` starts (the shell makes it; it must
    differ from ``state.epoch``). Other commands ignore it. A reset returns a state
    of the new epoch and an empty delta: dashboards resync from a snapshot.
    Raises only on a bug (the caller keeps the old state and answers ``internal``).
    """
    known = recall(state.commands, command.id)
    fp = fingerprint(command)
    if known is not None:
        if known.fingerprint != fp:
            return (
                state,
                EMPTY_DELTA,
                CommandResult(
                    False,
                    "id_reused",
                    f"command id {command.id[:40]!r} was already used for another command",
                ),
            )
        return state, EMPTY_DELTA, attrs.evolve(known.result, duplicate=True)
    if isinstance(command, FlagChat):
        new_state, delta, result = _flag_chat(state, command)
    elif isinstance(command, SendReply):
        new_state, delta, result = _reply(state, command)
    else:
        new_state, delta, result = _reset(state, command, epoch)
    memory = remember(new_state.commands, command.id, Remembered(fp, result))
    return attrs.evolve(new_state, commands=memory), delta, result


def start_session(state: RoomState, epoch: str) -> RoomState:
    """A new, empty session of the same room in ``epoch`` (see the module notes for
    what carries over)."""
    fresh = new_room(state.room_id, epoch, state.config)
    return attrs.evolve(
        fresh,
        viewers=state.viewers,
        live=state.live,
        battle=state.battle,
        streaks=state.streaks,
        closed_streaks=state.closed_streaks,
        dedup=state.dedup,
        commands=state.commands,
        replies=state.replies,
        reply_counter=state.reply_counter,
        counter=state.counter,
        events=state.events,
        duplicates=state.duplicates,
        streaks_timed_out=state.streaks_timed_out,
    )


def _reset(
    state: RoomState, command: ResetSession, epoch: str
) -> tuple[RoomState, Delta, CommandResult]:
    if not epoch or epoch == state.epoch:
        raise ValueError(f"session.reset needs a new epoch, got {epoch!r}")
    return start_session(state, epoch), EMPTY_DELTA, CommandResult(True, epoch=epoch)


def _reply(state: RoomState, command: SendReply) -> tuple[RoomState, Delta, CommandResult]:
    problem = check_reply_text(command.text, state.config.max_reply_chars)
    if problem is not None:
        return state, EMPTY_DELTA, CommandResult(False, "bad_args", problem)
    new_state, delta, reply = accept_reply(state, command.text, command.origin)
    return new_state, delta, CommandResult(True, reply_id=reply.reply_id)


def _flag_chat(state: RoomState, command: FlagChat) -> tuple[RoomState, Delta, CommandResult]:
    chat = state.chat
    where = [i for i, item in enumerate(chat) if item.msg_id == command.msg_id]
    if not where:
        return (
            state,
            EMPTY_DELTA,
            CommandResult(
                False,
                "unknown_message",
                f"no message {command.msg_id[:40]!r} in the room's chat "
                f"(it keeps the last {state.config.chat_history} and the pinned ones)",
            ),
        )
    item = chat[where[-1]]
    pinned, hidden = item.pinned, item.hidden
    action = command.action
    if action == "chat.pin" and not pinned:
        if sum(1 for c in chat if c.pinned) >= state.config.chat_pins:
            return (
                state,
                EMPTY_DELTA,
                CommandResult(
                    False,
                    "too_many_pins",
                    f"at most {state.config.chat_pins} messages can be pinned; unpin one first",
                ),
            )
        pinned = True
    elif action == "chat.unpin":
        pinned = False
    elif action == "chat.hide":
        hidden = True
    elif action == "chat.unhide":
        hidden = False
    if (pinned, hidden) == (item.pinned, item.hidden):
        return state, EMPTY_DELTA, CommandResult(True)  # already so: nothing to send
    marked = set(where)
    flagged = tuple(
        attrs.evolve(c, pinned=pinned, hidden=hidden) if i in marked else c
        for i, c in enumerate(chat)
    )
    if not pinned:  # an unpinned message past the window goes, as clients will drop it
        flagged = trim_ring(flagged, state.config.chat_history)
    delta = Delta(chat_updates=(ChatUpdate(command.msg_id, pinned, hidden),))
    return attrs.evolve(state, chat=flagged), delta, CommandResult(True)
