"""Room reducers: ``reduce(state, events) -> (state, delta)`` and friends.

These are the state machine of a room, in the manner of h11's ``_state.py``: pure,
synchronous functions over frozen values, no I/O, no clock (time comes in as
``received_at`` on events and as ``now`` for :func:`expire`). The actor calls one,
then swaps the returned state in the same synchronous step, so a cancellation lands
either before a batch or after it, never inside.

Every function here returns a *complete* new state or raises; it never returns a
half-applied batch. A reducer is not expected to raise on valid model events; if it
does, the shell keeps the old state.

What the state counts, besides the leaderboard and totals (for metrics):

* ``RoomState.events``: events applied (after dedup).
* ``RoomState.duplicates``: events dropped because their msgId was seen before.
* ``RoomState.streaks_timed_out``: streaks closed by :func:`expire`.

Decisions on what each event does (the gift rules are in ``meksd.core.gifts``, the
battle rules in ``meksd.core.battle``):

* Events with a ``msg_id`` already remembered change nothing and appear in no delta
  (also within one batch). Events without one (``roomUser``, ``streamEnd``, some
  likes and joins) are never de-duplicated.
* Counted gift diamonds go to the gifter's leaderboard row (created on the first
  diamond; 0-diamond gifts count in ``Totals.gifts`` only) and ``Totals.diamonds``;
  counted units (repeatCount) to ``Totals.gifts``.
* ``like`` adds ``likeCount`` to ``Totals.likes`` (``totalLikeCount`` is ignored: it
  counts the whole stream, not this session); ``member`` counts a join; ``follow``
  and ``share`` their totals; ``chat`` a comment and a chat item; ``roomUser`` sets
  ``viewers``.
* ``streamEnd`` sets ``live`` to ``"ended"``; a later gift, chat or like sets it back
  to ``"live"`` (the stream resumed); joins, viewer counts and battle messages do not.
* A pause (``StreamPaused``) sets ``"paused"``; only its resume (``StreamResumed``,
  which sets ``"live"``) or an end leaves it: viewers keep chatting and gifting in a
  paused LIVE, so their events say nothing about the video.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from meksd.core.battle import apply_armies, apply_battle_status
from meksd.core.chat import chat_item, extend_ring, trim_ring
from meksd.core.dedup import new_dedup, remember, resize, seen
from meksd.core.gifts import (
    CLOSED_STREAK_AGE,
    GiftOutcome,
    apply_gift,
    is_due,
    prune_closed,
    time_out,
)
from meksd.core.ranking import credit
from meksd.model.commands import CommandMemory
from meksd.model.events import (
    BattleArmies,
    BattleStatus,
    ChatMessage,
    Event,
    GiftSent,
    LikeReceived,
    MemberJoined,
    SocialAction,
    StreamEnded,
    StreamPaused,
    StreamResumed,
    User,
    ViewerCount,
)
from meksd.model.state import (
    EMPTY_DELTA,
    ChatItem,
    Delta,
    GiftItem,
    LeaderRow,
    LiveStatus,
    RoomConfig,
    RoomState,
    Totals,
)

__all__ = ["expire", "new_room", "next_deadline", "reduce"]


def new_room(room_id: str, epoch: str, config: RoomConfig) -> RoomState:
    """An empty, live room at the start of ``epoch``."""
    return RoomState(
        room_id=room_id,
        epoch=epoch,
        config=config,
        dedup=new_dedup(config.dedup_window),
        commands=CommandMemory(capacity=max(2, config.command_memory)),
    )


class _Ledger:
    """Scratch space for one call: leaderboard and totals changes, items in order.

    Private and short-lived; the public functions only ever return frozen values.
    """

    def __init__(self, state: RoomState) -> None:
        self.board = state.leaderboard.mutate()
        self.rows: dict[str, LeaderRow] = {}
        self.counter = state.counter
        self.diamonds = state.totals.diamonds
        self.gifts = state.totals.gifts
        self.items: list[GiftItem] = []

    def count(self, outcome: GiftOutcome, user: User) -> None:
        item = outcome.item
        self.items.append(item)
        self.gifts += outcome.counted
        diamonds = item.counted_diamonds
        if diamonds > 0:
            self.diamonds += diamonds
            self.counter += 1
            row = credit(self.board.get(user.user_id), user, diamonds, self.counter)
            self.board[user.user_id] = row
            self.rows[user.user_id] = row


def reduce(state: RoomState, events: Sequence[Event]) -> tuple[RoomState, Delta]:
    """Apply ``events`` in order; return the new state and what changed.

    The batch is atomic: the result reflects every event or (if this raises) none.
    The delta holds the changed leaderboard rows (latest value, in order of first
    change), every gift and chat item in arrival order, and totals, viewers, live
    and battle only when they differ from ``state``'s.
    """
    if not events:
        return state, EMPTY_DELTA
    config = state.config
    ledger = _Ledger(state)
    open_streaks = state.streaks.mutate()
    closed_streaks = state.closed_streaks.mutate()
    dedup = state.dedup
    likes = state.totals.likes
    comments = state.totals.comments
    joins = state.totals.joins
    follows = state.totals.follows
    shares = state.totals.shares
    viewers = state.viewers
    live = state.live
    battle = state.battle
    applied = 0
    duplicates = 0
    chat: list[ChatItem] = []

    for event in events:
        msg_id = event.msg_id
        if msg_id is not None:
            if seen(dedup, msg_id):
                duplicates += 1
                continue
            dedup = remember(dedup, msg_id)
        applied += 1
        if isinstance(event, GiftSent):
            key = event.key
            prior = open_streaks.get(key)
            if prior is None:
                prior = closed_streaks.get(key)
            outcome = apply_gift(prior, event)
            streak = outcome.streak
            if streak is not None and streak is not prior:
                if streak.closed:
                    closed_streaks[key] = streak
                    open_streaks.pop(key, None)
                else:
                    open_streaks[key] = streak
                    closed_streaks.pop(key, None)
            # A streak remembers the names its events carried; credit with those.
            ledger.count(
                outcome, streak.user if event.streakable and streak is not None else event.user
            )
            live = _active(live)
        elif isinstance(event, ChatMessage):
            chat.append(chat_item(event))
            comments += 1
            live = _active(live)
        elif isinstance(event, LikeReceived):
            likes += event.like_count
            live = _active(live)
        elif isinstance(event, MemberJoined):
            joins += 1
        elif isinstance(event, SocialAction):
            if event.action == "follow":
                follows += 1
            else:
                shares += 1
        elif isinstance(event, ViewerCount):
            viewers = event.viewer_count
        elif isinstance(event, BattleStatus):
            battle = apply_battle_status(battle, event)
        elif isinstance(event, BattleArmies):
            battle = apply_armies(battle, event, config.battle_supporters)
        elif isinstance(event, StreamEnded):
            live = "ended"
        elif isinstance(event, StreamPaused):
            live = "paused"
        elif isinstance(event, StreamResumed):
            live = "live"

    closed = closed_streaks.finish()
    if len(closed) > config.closed_streak_memory:
        closed = prune_closed(closed, memory=config.closed_streak_memory)
    totals = Totals(
        diamonds=ledger.diamonds,
        gifts=ledger.gifts,
        likes=likes,
        comments=comments,
        joins=joins,
        follows=follows,
        shares=shares,
    )
    new_state = attrs.evolve(
        state,
        leaderboard=ledger.board.finish(),
        totals=totals,
        viewers=viewers,
        live=live,
        battle=battle,
        chat=extend_ring(state.chat, chat, config.chat_history) if chat else state.chat,
        streaks=open_streaks.finish(),
        closed_streaks=closed,
        dedup=dedup,
        counter=ledger.counter,
        events=state.events + applied,
        duplicates=state.duplicates + duplicates,
    )
    return new_state, _delta(state, new_state, ledger, chat)


def _active(live: LiveStatus) -> LiveStatus:
    """What a gift, chat or like says of the stream: an ended one is live again; a
    paused one stays paused (its viewers go on chatting)."""
    return "live" if live == "ended" else live


def expire(state: RoomState, now: float) -> tuple[RoomState, Delta]:
    """Close streaks whose last event is older than ``streak_timeout_s`` at ``now``.

    Each closed streak counts what it had not counted (its item is ``"timeout"``,
    named ``<last msgId>:timeout``) and is remembered for late events. When
    something timed out, closed streaks idle for ``CLOSED_STREAK_AGE`` timeouts are
    forgotten too. Returns ``state`` itself and an empty delta when nothing is due,
    so it is cheap to call at every deadline.
    """
    timeout = state.config.streak_timeout_s
    due = [streak for streak in state.streaks.values() if is_due(streak, now, timeout)]
    if not due:
        return state, EMPTY_DELTA
    due.sort(key=lambda s: (s.last_at, s.user.user_id, s.gift_id, s.group_id))
    ledger = _Ledger(state)
    open_streaks = state.streaks.mutate()
    closed_streaks = state.closed_streaks.mutate()
    for streak in due:
        key = (streak.user.user_id, streak.gift_id, streak.group_id)
        outcome = time_out(streak)
        del open_streaks[key]
        assert outcome.streak is not None
        closed_streaks[key] = outcome.streak
        ledger.count(outcome, streak.user)
    closed = prune_closed(
        closed_streaks.finish(),
        memory=state.config.closed_streak_memory,
        older_than=now - CLOSED_STREAK_AGE * timeout,
    )
    new_state = attrs.evolve(
        state,
        leaderboard=ledger.board.finish(),
        totals=attrs.evolve(state.totals, diamonds=ledger.diamonds, gifts=ledger.gifts),
        streaks=open_streaks.finish(),
        closed_streaks=closed,
        counter=ledger.counter,
        streaks_timed_out=state.streaks_timed_out + len(due),
    )
    return new_state, _delta(state, new_state, ledger, [])


def next_deadline(state: RoomState) -> float | None:
    """The earliest ``now`` at which :func:`expire` would change something, or None.

    O(number of open streaks), which is small: a streak is open only between its
    first event and its end event or timeout.
    """
    if not state.streaks:
        return None
    return min(s.last_at for s in state.streaks.values()) + state.config.streak_timeout_s


def _delta(old: RoomState, new: RoomState, ledger: _Ledger, chat: list[ChatItem]) -> Delta:
    battle_changed = new.battle != old.battle
    return Delta(
        leaderboard=tuple(ledger.rows.values()),
        gifts=tuple(ledger.items),
        chat=tuple(chat),
        totals=new.totals if new.totals != old.totals else None,
        viewers=new.viewers if new.viewers != old.viewers else None,
        live=new.live if new.live != old.live else None,
        battle_changed=battle_changed,
        battle=new.battle if battle_changed else None,
    )


def reconfigure(state: RoomState, config: RoomConfig) -> RoomState:
    """The same room under new limits (a config reload). Pure.

    The chat ring is trimmed to the new ``chat_history``; the msgId memory keeps what
    it remembers under its new capacity; timeouts and other limits apply from now on.
    """
    dedup = resize(state.dedup, config.dedup_window)
    chat = trim_ring(state.chat, config.chat_history)
    return attrs.evolve(state, config=config, chat=chat, dedup=dedup)
