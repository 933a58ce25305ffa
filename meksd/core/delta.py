"""Conflating deltas: two consecutive deltas as one.

A :class:`~meksd.model.state.Delta` holds state rows (conflated: the latest value
wins) and items (itemized: every one, in order). :func:`merge` keeps that shape, so
a publisher that fell behind, or a writer that wakes to several deltas, may send
one merged delta instead; applying it is the same as applying both in order
(``tests/test_delta.py`` checks this through ``meksd.core.wire.apply_delta``).
"""

from __future__ import annotations

import attrs

from meksd.model.state import ChatItem, ChatUpdate, Delta, LeaderRow, Reply

__all__ = ["merge"]


def merge(older: Delta, newer: Delta) -> Delta:
    """One delta equivalent to applying ``older`` then ``newer``.

    Leaderboard rows: one per user, the newer row wins, in order of first change.
    Gift and chat items: concatenated, all kept (``merge`` has no room config, so the
    chat is not trimmed; a client trims to its ``chat_limit``). Chat updates: one per
    message, the newer wins; a newer update of a message that is new in ``older``
    is folded into that chat item instead (a client applies updates before it
    appends). Scalars and battle: the newer value when set, else the older.
    """
    if older.empty:
        return newer
    if newer.empty:
        return older
    chat, chat_updates = _merge_chat(older, newer)
    return Delta(
        leaderboard=_merge_rows(older.leaderboard, newer.leaderboard),
        gifts=older.gifts + newer.gifts,
        chat=chat,
        chat_updates=chat_updates,
        totals=newer.totals if newer.totals is not None else older.totals,
        viewers=newer.viewers if newer.viewers is not None else older.viewers,
        live=newer.live if newer.live is not None else older.live,
        battle_changed=older.battle_changed or newer.battle_changed,
        battle=newer.battle if newer.battle_changed else older.battle,
        replies=_merge_replies(older.replies, newer.replies),
    )


def _merge_replies(older: tuple[Reply, ...], newer: tuple[Reply, ...]) -> tuple[Reply, ...]:
    if not older or not newer:
        return older or newer
    latest = {reply.reply_id: reply for reply in older}
    for reply in newer:
        latest[reply.reply_id] = reply
    return tuple(latest.values())


def _merge_rows(
    older: tuple[LeaderRow, ...], newer: tuple[LeaderRow, ...]
) -> tuple[LeaderRow, ...]:
    if not newer:
        return older
    if not older:
        return newer
    rows = {row.user_id: row for row in older}
    for row in newer:
        rows[row.user_id] = row
    return tuple(rows.values())


def _merge_chat(older: Delta, newer: Delta) -> tuple[tuple[ChatItem, ...], tuple[ChatUpdate, ...]]:
    if not newer.chat_updates:
        return older.chat + newer.chat, older.chat_updates
    flags = {u.msg_id: u for u in newer.chat_updates}
    folded: set[str] = set()
    chat: list[ChatItem] = []
    for item in older.chat:
        update = flags.get(item.msg_id)
        if update is not None:
            item = attrs.evolve(item, pinned=update.pinned, hidden=update.hidden)
            folded.add(item.msg_id)
        chat.append(item)
    merged = {u.msg_id: u for u in older.chat_updates}
    for update in newer.chat_updates:
        if update.msg_id not in folded:
            merged[update.msg_id] = update
    return (*chat, *newer.chat), tuple(merged.values())
