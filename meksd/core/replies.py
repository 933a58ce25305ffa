"""Operator replies into the live chat: accept, settle. Pure.

``chat.reply {text}`` is checked by :func:`check_reply_text`, then
:func:`accept_reply` adds a ``pending`` :class:`~meksd.model.state.Reply` to the
room's state with the next ``reply_id`` (``<room>:<epoch>:<n>``: the counter is
carried across resets and persisted with the state, the epoch tells apart two runs
of a room that lost its state). The shell's sender posts it and its outcome comes
back as a :class:`ReplySettled` value, applied by :func:`settle_reply`: a reply is
settled once; a second outcome for it (or one for a reply the state no longer has)
changes nothing. :func:`settle_all` fails every pending reply (shutdown).
"""

from __future__ import annotations

import unicodedata

import attrs

from meksd.model.state import EMPTY_DELTA, Delta, Reply, RoomState

__all__ = ["ReplySettled", "accept_reply", "check_reply_text", "settle_all", "settle_reply"]


@attrs.frozen
class ReplySettled:
    """The sender's verdict on one reply (an item of the room's inbox)."""

    reply_id: str
    ok: bool
    error: str | None = None
    """Why it failed: ``deadline``, ``rejected_<status>``, ``shutdown``, ``queue_full``."""
    attempts: int = 0
    """POSTs made for it."""
    accepted_at: float = 0.0
    """When the room accepted it (shell clock; for the time-to-settle metric)."""


def check_reply_text(text: object, max_chars: int) -> str | None:
    """Why ``text`` cannot be sent as a reply, or None when it can."""
    if not isinstance(text, str):
        return "expected string @ args.text"
    if not text.strip():
        return "empty reply @ args.text"
    if len(text) > max_chars:
        return f"reply too long: {len(text)} characters, at most {max_chars} @ args.text"
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch != "\u200d":
            return f"control or invalid character U+{ord(ch):04X} @ args.text"
    return None


def accept_reply(state: RoomState, text: str, origin: str) -> tuple[RoomState, Delta, Reply]:
    """``state`` with a new pending reply; the delta announcing it and the reply."""
    reply = Reply(
        reply_id=f"{state.room_id}:{state.epoch}:{state.reply_counter + 1}",
        text=text,
        origin=origin,
    )
    replies = _trim((*state.replies, reply), state.config.chat_history)
    new = attrs.evolve(state, replies=replies, reply_counter=state.reply_counter + 1)
    return new, Delta(replies=(reply,)), reply


def settle_reply(state: RoomState, outcome: ReplySettled) -> tuple[RoomState, Delta, Reply | None]:
    """``state`` with the reply marked ``sent``/``failed``; None (no change) when it is
    not pending in ``state``."""
    for i, reply in enumerate(state.replies):
        if reply.reply_id == outcome.reply_id:
            if reply.status != "pending":
                return state, EMPTY_DELTA, None
            settled = attrs.evolve(
                reply,
                status="sent" if outcome.ok else "failed",
                error=None if outcome.ok else (outcome.error or "failed"),
            )
            replies = (*state.replies[:i], settled, *state.replies[i + 1 :])
            replies = _trim(replies, state.config.chat_history)
            return attrs.evolve(state, replies=replies), Delta(replies=(settled,)), settled
    return state, EMPTY_DELTA, None


def settle_all(state: RoomState, error: str) -> tuple[RoomState, Delta, tuple[Reply, ...]]:
    """Every pending reply failed with ``error``; the delta and the replies settled."""
    settled: list[Reply] = []
    delta = EMPTY_DELTA
    for reply in state.replies:
        if reply.status == "pending":
            state, one, done = settle_reply(state, ReplySettled(reply.reply_id, False, error))
            if done is not None:
                settled.append(done)
                delta = Delta(replies=(*delta.replies, *one.replies))
    return state, delta, tuple(settled)


def _trim(replies: tuple[Reply, ...], limit: int) -> tuple[Reply, ...]:
    start = len(replies) - max(limit, 0)
    return tuple(r for i, r in enumerate(replies) if i >= start or r.status == "pending")
