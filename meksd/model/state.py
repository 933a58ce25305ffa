"""A room's state and the delta between two states: frozen values only.

The actor owns the current ``RoomState`` and swaps it whole; nothing mutates one.
Maps are ``immutables.Map`` (a persistent HAMT) so that a reducer can return a new
state in O(log n) instead of copying every leaderboard row and remembered msgId.
"""

from __future__ import annotations

from typing import Literal

import attrs
import immutables

from meksd.model.commands import CommandMemory
from meksd.model.events import GiftKey, User

LiveStatus = Literal["live", "paused", "ended"]
"""``live`` until the feed says otherwise: ``paused`` (the host paused the LIVE) and
``ended`` (``streamEnd``); see ``meksd.core.reduce`` for what leaves each."""


@attrs.frozen
class LeaderRow:
    """One gifter on the session leaderboard.

    Rank order is ``diamonds`` descending, then ``since`` ascending: of two equal
    scores, the one reached first ranks higher.
    """

    user_id: str
    unique_id: str
    nickname: str
    diamonds: int
    since: int
    """Room-wide counter value when ``diamonds`` last changed (tie-break)."""


@attrs.frozen
class Totals:
    """Session counters. ``gifts`` counts items (summed repeatCount), not events."""

    diamonds: int = 0
    gifts: int = 0
    likes: int = 0
    comments: int = 0
    joins: int = 0
    follows: int = 0
    shares: int = 0


@attrs.frozen
class Streak:
    """A streakable gift in progress, or closed by timeout and remembered.

    ``counted`` is the repeatCount already added to the leaderboard: 0 while the
    streak is live, the last repeatCount once it closed by timeout. A late end
    event counts only ``repeat_count - counted``.

    Open streaks live in ``RoomState.streaks``; closed ones (by timeout or by their
    end event) in ``RoomState.closed_streaks``, so that a late or re-delivered event
    of the same key is reconciled instead of counted again. A key is in at most one
    of the two maps. See ``meksd.core.gifts``.
    """

    user: User
    gift_id: str
    gift_name: str
    group_id: str
    diamond_count: int
    repeat_count: int
    counted: int
    last_at: float
    """``received_at`` of the latest event of this streak."""
    closed: bool = False
    """True once closed (by timeout or end event); kept for late-event reconciliation
    until evicted."""
    last_msg_id: str = ""
    """msgId of the latest event of this streak (names the item a timeout emits)."""
    last_wall_ms: int = 0
    """``wall_ms`` of the latest event of this streak (stamps the timeout item)."""


@attrs.frozen
class BattleHost:
    """A host in a battle, with the points the feed reported."""

    user_id: str
    unique_id: str
    nickname: str
    score: int = 0


@attrs.frozen
class BattleSupporter:
    """A supporter of one host in the current battle."""

    user_id: str
    unique_id: str
    nickname: str
    score: int


@attrs.frozen
class Battle:
    """The current or last battle (PK)."""

    battle_id: str
    status: Literal["active", "ended"]
    hosts: tuple[BattleHost, ...]
    supporters: tuple[tuple[str, tuple[BattleSupporter, ...]], ...] = ()
    """Per host user_id, its top supporters by score (highest first)."""
    started_wall_ms: int = 0
    duration_s: int | None = None
    winner: str | None = None
    """Set when ended: the winning host's user_id, ``"draw"``, or None if unknown."""


@attrs.frozen
class ChatItem:
    """A chat message as dashboards see it."""

    msg_id: str
    user_id: str
    unique_id: str
    nickname: str
    comment: str
    wall_ms: int
    pinned: bool = False
    """Pinned by an operator (``chat.pin``): kept in the chat past ``chat_history``."""
    hidden: bool = False
    """Hidden by an operator (``chat.hide``): still in the chat, flagged."""


@attrs.frozen
class ChatUpdate:
    """New flags of a chat message already in the room's chat (a delta's
    ``chat_updates``)."""

    msg_id: str
    pinned: bool
    hidden: bool


ReplyStatus = Literal["pending", "sent", "failed"]


@attrs.frozen
class Reply:
    """An operator's reply into the live chat (``chat.reply``), as dashboards see it.

    ``pending`` from the command until the sender settles it: ``sent`` (the upstream
    took it) or ``failed`` with ``error`` (see ``docs/replies.md``). Settled once.
    """

    reply_id: str
    """Server-assigned, ``<room>:<epoch>:<n>``; the upstream ``Idempotency-Key``."""
    text: str
    status: ReplyStatus = "pending"
    error: str | None = None
    origin: str = ""
    """The dashboard connection that sent it (where ``reply_result`` goes); not on the wire."""


@attrs.frozen
class GiftItem:
    """One gift event as dashboards see it, itemized in deltas.

    ``streak`` is ``"single"`` for a non-streakable gift, ``"progress"`` for a
    streak update (not counted yet), ``"end"`` when the end event counted it,
    ``"timeout"`` when the streak was closed for lack of an end event.

    A ``"timeout"`` item is not a feed event: its ``msg_id`` is the streak's last
    msgId followed by ``":timeout"``, its ``wall_ms`` that of the streak's last event.
    An ``"end"`` item's ``repeat_count`` is the streak's final count, and its
    ``counted_diamonds`` may be 0 when a timeout had already counted everything.
    """

    msg_id: str
    user_id: str
    unique_id: str
    nickname: str
    gift_id: str
    gift_name: str
    diamond_count: int
    repeat_count: int
    streak: Literal["single", "progress", "end", "timeout"]
    counted_diamonds: int
    """Diamonds this item added to the leaderboard (0 for progress)."""
    wall_ms: int


@attrs.frozen
class Dedup:
    """Bounded memory of seen msgIds: an open segment and sealed ones, newest first.

    A lookup checks every segment; a full open segment is sealed and the oldest
    sealed ones are forgotten, so between 15/16 of ``capacity`` and ``capacity`` of
    the latest ids are remembered, at O(log n) per insert (``meksd.core.dedup``).
    """

    capacity: int
    current: immutables.Map[str, None] = attrs.field(factory=immutables.Map)
    """The open segment."""
    sealed: tuple[immutables.Map[str, None], ...] = ()
    """Sealed segments, newest first; ``sealed[i]`` is number ``segment - 1 - i``."""
    segment: int = 0
    """The open segment's number (segments sealed so far in this memory)."""


@attrs.frozen
class RoomConfig:
    """The parts of a room's configuration that reducers need (pure data)."""

    streak_timeout_s: float = 15.0
    chat_history: int = 50
    dedup_window: int = 20_000
    closed_streak_memory: int = 4_096
    """How many timeout-closed streaks are remembered for late-end reconciliation."""
    battle_supporters: int = 5
    chat_pins: int = 5
    """Most chat messages pinned at once (pinned messages outlive ``chat_history``)."""
    command_memory: int = 1024
    """Operator command ids remembered for idempotent retries (half to all of them)."""
    max_reply_chars: int = 150
    """Longest ``chat.reply`` text, in characters."""


@attrs.frozen
class RoomState:
    """Everything meksd knows about one room. Replaced whole, never mutated."""

    room_id: str
    epoch: str
    config: RoomConfig = RoomConfig()
    leaderboard: immutables.Map[str, LeaderRow] = attrs.field(factory=immutables.Map)
    totals: Totals = Totals()
    viewers: int = 0
    live: LiveStatus = "live"
    battle: Battle | None = None
    chat: tuple[ChatItem, ...] = ()
    streaks: immutables.Map[GiftKey, Streak] = attrs.field(factory=immutables.Map)
    """Open streaks (``closed`` is False); their deadlines drive ``expire``."""
    closed_streaks: immutables.Map[GiftKey, Streak] = attrs.field(factory=immutables.Map)
    """Closed streaks remembered for late-event reconciliation (``closed`` is True).
    Bounded by ``RoomConfig.closed_streak_memory``."""
    dedup: Dedup = Dedup(capacity=20_000)
    counter: int = 0
    """Monotonic counter for leaderboard tie-breaks; bumped per score change."""
    events: int = 0
    """Events applied (after dedup), for statistics."""
    duplicates: int = 0
    """Events dropped because their msgId was already seen (cumulative)."""
    streaks_timed_out: int = 0
    """Streaks closed by ``expire`` for lack of an end event (cumulative)."""
    commands: CommandMemory = attrs.field(factory=CommandMemory)
    """Results of recent operator command ids; carried across ``session.reset``."""
    replies: tuple[Reply, ...] = ()
    """Operator replies, oldest first: every pending one and the last ``chat_history``."""
    reply_counter: int = 0
    """Replies accepted so far (names the next ``reply_id``); carried across resets."""


@attrs.frozen
class Delta:
    """What changed between two states, ready to encode once per room.

    State rows are conflated (latest leaderboard row per user, latest totals,
    battle, viewers, live); items are itemized in order (every gift, every chat).
    ``None`` for a scalar means unchanged; ``battle_changed`` distinguishes
    "battle became None" from "battle unchanged".
    """

    leaderboard: tuple[LeaderRow, ...] = ()
    gifts: tuple[GiftItem, ...] = ()
    chat: tuple[ChatItem, ...] = ()
    chat_updates: tuple[ChatUpdate, ...] = ()
    """Flag changes of messages already in the chat (conflated per msg_id)."""
    totals: Totals | None = None
    viewers: int | None = None
    live: LiveStatus | None = None
    battle_changed: bool = False
    battle: Battle | None = None
    replies: tuple[Reply, ...] = ()
    """New or settled operator replies (conflated per ``reply_id``, the newer wins)."""

    @property
    def empty(self) -> bool:
        return not (
            self.leaderboard
            or self.gifts
            or self.chat
            or self.chat_updates
            or self.totals is not None
            or self.viewers is not None
            or self.live is not None
            or self.battle_changed
            or self.replies
        )


EMPTY_DELTA = Delta()
