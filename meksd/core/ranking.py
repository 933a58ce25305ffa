"""The session leaderboard: who gave how many diamonds, and in what order.

A gifter has a :class:`~meksd.model.state.LeaderRow` once a gift of theirs counted
at least one diamond; gifts worth 0 diamonds count in ``Totals.gifts`` but create
no row. Rank order is ``diamonds`` descending, then ``since`` ascending (of two
equal scores, the one reached first ranks higher); ``since`` is the room counter
value when the row's diamonds last changed, unique per change, so the order is
total.
"""

from __future__ import annotations

from collections.abc import Iterable

from meksd.model.events import User
from meksd.model.state import LeaderRow, RoomState

__all__ = ["credit", "rank_key", "ranked", "ranked_rows"]


def credit(row: LeaderRow | None, user: User, diamonds: int, since: int) -> LeaderRow:
    """``row`` (or a new one for ``user``) with ``diamonds`` more, changed at ``since``.

    ``unique_id`` and ``nickname`` follow the latest gift that carried them; an
    event without them keeps the ones already known.
    """
    if row is None:
        return LeaderRow(
            user_id=user.user_id,
            unique_id=user.unique_id,
            nickname=user.nickname,
            diamonds=diamonds,
            since=since,
        )
    return LeaderRow(
        user_id=row.user_id,
        unique_id=user.unique_id or row.unique_id,
        nickname=user.nickname or row.nickname,
        diamonds=row.diamonds + diamonds,
        since=since,
    )


def rank_key(row: LeaderRow) -> tuple[int, int, str]:
    """Sort key for rank order (best first)."""
    return (-row.diamonds, row.since, row.user_id)


def ranked_rows(rows: Iterable[LeaderRow]) -> list[LeaderRow]:
    """``rows`` in rank order."""
    return sorted(rows, key=rank_key)


def ranked(state: RoomState) -> list[LeaderRow]:
    """The room's leaderboard in rank order. O(n log n) in the number of gifters."""
    return ranked_rows(state.leaderboard.values())
