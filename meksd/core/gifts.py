"""Counting gifts: streaks, their end events, timeouts and late events.

This module decides, for one gift event and the streak of its key, what is counted;
it knows nothing of leaderboards or maps (``meksd.core.reduce`` composes it).

The rules (DESIGN.md, "Counting gifts"), with the decisions made where it is silent:

* A gift key is ``(userId, giftId, groupId)``. Two streaks of the same gift by the
  same user are told apart by ``groupId`` (TikTok gives every combo its own); a feed
  that omits ``groupId`` must not start a second streak of a key while the first is
  remembered, or the second is taken for the first.
* Non-streakable gifts (``giftType != 1``) count ``diamondCount x repeatCount`` at
  once: item ``"single"``.
* A streakable progress event (``repeatEnd`` false) opens or updates the key's
  streak, keeping the highest ``repeatCount`` seen: item ``"progress"``, nothing
  counted.
* A streakable end event counts ``diamondCount x (total - counted)`` where ``total``
  is the larger of its own ``repeatCount`` and the highest seen, and ``counted`` what
  an earlier timeout already counted (0 normally): item ``"end"``. An end event with
  no prior progress counts its own ``repeatCount``.
* ``expire`` closes a streak whose last event is ``streak_timeout_s`` old, counting
  ``repeatCount - counted``: item ``"timeout"``.
* Closed streaks (by end event *or* timeout) are remembered, with ``counted`` equal
  to what was counted, so that a late end counts only the rest (possibly 0), a
  re-delivered end (new msgId) counts 0, a late progress event at or below
  ``counted`` changes nothing, and a progress event above it re-opens the streak
  keeping ``counted``. The memory is bounded (``closed_streak_memory``, oldest
  ``last_at`` evicted first) and ``expire`` forgets closed streaks idle for
  ``CLOSED_STREAK_AGE`` timeouts; an event for a forgotten streak counts as new.

So a streak whose events all arrive within ``CLOSED_STREAK_AGE`` timeouts is counted
exactly once, whatever their order, batching and timeouts in between.
"""

from __future__ import annotations

import heapq
from typing import Final, Literal

import attrs
import immutables

from meksd.model.events import GiftKey, GiftSent, User
from meksd.model.state import GiftItem, Streak

__all__ = [
    "CLOSED_STREAK_AGE",
    "GiftOutcome",
    "apply_gift",
    "is_due",
    "prune_closed",
    "time_out",
]

CLOSED_STREAK_AGE: Final = 10
"""Closed streaks idle for this many ``streak_timeout_s`` are forgotten by ``expire``."""


@attrs.frozen
class GiftOutcome:
    """What one gift event does to its key's streak and to the counts."""

    streak: Streak | None
    """The key's streak after the event: open, closed, or None (no streak)."""
    item: GiftItem
    """The item dashboards see for this event."""
    counted: int
    """Gift units (repeatCount) counted by this event; ``item.counted_diamonds``
    holds the diamonds."""


def apply_gift(prior: Streak | None, gift: GiftSent) -> GiftOutcome:
    """Count ``gift`` given ``prior``, the open or closed streak of its key (or None).

    Pure; see the module docstring for the rules.
    """
    if not gift.streakable:
        return GiftOutcome(
            streak=prior,
            item=_item(gift, "single", gift.repeat_count, gift.diamond_count * gift.repeat_count),
            counted=gift.repeat_count,
        )
    if gift.repeat_end:
        return _end(prior, gift)
    return _progress(prior, gift)


def _progress(prior: Streak | None, gift: GiftSent) -> GiftOutcome:
    item = _item(gift, "progress", gift.repeat_count, 0)
    if prior is None:
        streak = Streak(
            user=gift.user,
            gift_id=gift.gift_id,
            gift_name=gift.gift_name,
            group_id=gift.group_id,
            diamond_count=gift.diamond_count,
            repeat_count=gift.repeat_count,
            counted=0,
            last_at=gift.received_at,
            closed=False,
            last_msg_id=gift.msg_id,
            last_wall_ms=gift.wall_ms,
        )
        return GiftOutcome(streak=streak, item=item, counted=0)
    # A closed streak re-opens only if this event shows more than was counted;
    # otherwise it is a late progress event of a streak already counted.
    reopen = prior.closed and gift.repeat_count > prior.counted
    return GiftOutcome(
        streak=_touch(prior, gift, closed=prior.closed and not reopen),
        item=item,
        counted=0,
    )


def _end(prior: Streak | None, gift: GiftSent) -> GiftOutcome:
    total = gift.repeat_count if prior is None else max(gift.repeat_count, prior.repeat_count)
    already = 0 if prior is None else prior.counted
    counted = max(0, total - already)
    if prior is None:
        streak = Streak(
            user=gift.user,
            gift_id=gift.gift_id,
            gift_name=gift.gift_name,
            group_id=gift.group_id,
            diamond_count=gift.diamond_count,
            repeat_count=total,
            counted=total,
            last_at=gift.received_at,
            closed=True,
            last_msg_id=gift.msg_id,
            last_wall_ms=gift.wall_ms,
        )
    else:
        streak = attrs.evolve(_touch(prior, gift, closed=True), counted=max(already, total))
    return GiftOutcome(
        streak=streak,
        item=_item(gift, "end", total, gift.diamond_count * counted),
        counted=counted,
    )


def _touch(prior: Streak, gift: GiftSent, *, closed: bool) -> Streak:
    """``prior`` updated with the latest event of its key."""
    return Streak(
        user=_latest_user(prior.user, gift.user),
        gift_id=prior.gift_id,
        gift_name=gift.gift_name or prior.gift_name,
        group_id=prior.group_id,
        diamond_count=gift.diamond_count,
        repeat_count=max(prior.repeat_count, gift.repeat_count),
        counted=prior.counted,
        last_at=max(prior.last_at, gift.received_at),
        closed=closed,
        last_msg_id=gift.msg_id,
        last_wall_ms=gift.wall_ms,
    )


def _latest_user(old: User, new: User) -> User:
    if (new.unique_id or not old.unique_id) and (new.nickname or not old.nickname):
        return new
    return User(
        user_id=new.user_id,
        unique_id=new.unique_id or old.unique_id,
        nickname=new.nickname or old.nickname,
    )


def is_due(streak: Streak, now: float, timeout: float) -> bool:
    """Whether the open ``streak`` must be closed by a timeout at ``now``."""
    return not streak.closed and streak.last_at + timeout <= now


def time_out(streak: Streak) -> GiftOutcome:
    """Close the open ``streak`` for lack of an end event, counting what is left."""
    counted = max(0, streak.repeat_count - streak.counted)
    closed = attrs.evolve(streak, closed=True, counted=max(streak.counted, streak.repeat_count))
    item = GiftItem(
        msg_id=f"{streak.last_msg_id}:timeout",
        user_id=streak.user.user_id,
        unique_id=streak.user.unique_id,
        nickname=streak.user.nickname,
        gift_id=streak.gift_id,
        gift_name=streak.gift_name,
        diamond_count=streak.diamond_count,
        repeat_count=streak.repeat_count,
        streak="timeout",
        counted_diamonds=streak.diamond_count * counted,
        wall_ms=streak.last_wall_ms,
    )
    return GiftOutcome(streak=closed, item=item, counted=counted)


def prune_closed(
    closed: immutables.Map[GiftKey, Streak],
    *,
    memory: int,
    older_than: float | None = None,
) -> immutables.Map[GiftKey, Streak]:
    """Forget closed streaks: those with ``last_at <= older_than``, then the oldest.

    When more than ``memory`` remain, the oldest are evicted down to 7/8 of
    ``memory``, so the O(n log n) pass runs once per ``memory / 8`` insertions
    rather than on every one. Returns ``closed`` itself when nothing is forgotten.
    """
    doomed: list[GiftKey] = []
    if older_than is not None:
        doomed = [key for key, streak in closed.items() if streak.last_at <= older_than]
    remaining = len(closed) - len(doomed)
    if remaining > memory:
        keep = max(0, memory - memory // 8)
        gone = set(doomed)
        candidates = ((s.last_at, k) for k, s in closed.items() if k not in gone)
        doomed.extend(key for _, key in heapq.nsmallest(remaining - keep, candidates))
    if not doomed:
        return closed
    mutation = closed.mutate()
    for key in doomed:
        del mutation[key]
    return mutation.finish()


def _item(
    gift: GiftSent,
    streak: Literal["single", "progress", "end", "timeout"],
    repeat_count: int,
    counted_diamonds: int,
) -> GiftItem:
    return GiftItem(
        msg_id=gift.msg_id,
        user_id=gift.user.user_id,
        unique_id=gift.user.unique_id,
        nickname=gift.user.nickname,
        gift_id=gift.gift_id,
        gift_name=gift.gift_name,
        diamond_count=gift.diamond_count,
        repeat_count=repeat_count,
        streak=streak,
        counted_diamonds=counted_diamonds,
        wall_ms=gift.wall_ms,
    )
