"""Conflating deltas: two consecutive deltas as one.

A :class:`~meksd.model.state.Delta` holds state rows (conflated: the latest value
wins) and items (itemized: every one, in order). :func:`merge` keeps that shape, so
a publisher that fell behind, or a writer that wakes to several deltas, may send
one merged delta instead; applying it is the same as applying both in order
(``tests/test_delta.py`` checks this through ``meksd.core.wire.apply_delta``).
"""

from __future__ import annotations

from meksd.model.state import Delta, LeaderRow

__all__ = ["merge"]


def merge(older: Delta, newer: Delta) -> Delta:
    """One delta equivalent to applying ``older`` then ``newer``.

    Leaderboard rows: one per user, the newer row wins, in order of first change.
    Gift and chat items: concatenated, all kept (``merge`` has no room config, so the
    chat is not trimmed; a client trims to its ``chat_limit``). Scalars and battle:
    the newer value when set, else the older.
    """
    if older.empty:
        return newer
    if newer.empty:
        return older
    return Delta(
        leaderboard=_merge_rows(older.leaderboard, newer.leaderboard),
        gifts=older.gifts + newer.gifts,
        chat=older.chat + newer.chat,
        totals=newer.totals if newer.totals is not None else older.totals,
        viewers=newer.viewers if newer.viewers is not None else older.viewers,
        live=newer.live if newer.live is not None else older.live,
        battle_changed=older.battle_changed or newer.battle_changed,
        battle=newer.battle if newer.battle_changed else older.battle,
    )


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
