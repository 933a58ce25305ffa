"""Typed feed events: what the normalizer produces and reducers consume.

Every event carries ``received_at`` (monotonic seconds, the shell's clock) and
``wall_ms`` (unix milliseconds, for display). IDs are always strings here, whatever
the feed sent. ``msg_id`` is the feed's ``msgId`` and drives de-duplication; it is
``None`` only for event types whose feeds omit it (``roomUser``, ``streamEnd``).
"""

from __future__ import annotations

from typing import Literal

import attrs


@attrs.frozen
class User:
    """A viewer or host as the feed names them."""

    user_id: str
    unique_id: str = ""
    nickname: str = ""


GiftKey = tuple[str, str, str]
"""``(user_id, gift_id, group_id)``: the identity of one gift streak."""


@attrs.frozen
class GiftSent:
    """A ``gift`` event. ``gift_type == 1`` means streakable (see DESIGN.md)."""

    msg_id: str
    user: User
    gift_id: str
    gift_name: str
    gift_type: int
    repeat_count: int
    repeat_end: bool
    group_id: str
    diamond_count: int
    received_at: float
    wall_ms: int

    @property
    def key(self) -> GiftKey:
        return (self.user.user_id, self.gift_id, self.group_id)

    @property
    def streakable(self) -> bool:
        return self.gift_type == 1


@attrs.frozen
class ChatMessage:
    """A ``chat`` event."""

    msg_id: str
    user: User
    comment: str
    received_at: float
    wall_ms: int


@attrs.frozen
class LikeReceived:
    """A ``like`` event: ``like_count`` likes in this batch from one user."""

    msg_id: str | None
    user: User
    like_count: int
    total_like_count: int | None
    received_at: float
    wall_ms: int


@attrs.frozen
class MemberJoined:
    """A ``member`` event: someone entered the room."""

    msg_id: str | None
    user: User
    received_at: float
    wall_ms: int


@attrs.frozen
class SocialAction:
    """A ``follow``/``share`` event, or a ``social`` event resolved to one of them."""

    msg_id: str | None
    user: User
    action: Literal["follow", "share"]
    received_at: float
    wall_ms: int


@attrs.frozen
class ViewerCount:
    """A ``roomUser`` event: the room's current viewer count."""

    msg_id: str | None
    viewer_count: int
    received_at: float
    wall_ms: int


@attrs.frozen
class BattleStatus:
    """A ``linkMicBattle`` event: a battle (PK) started or ended, with its hosts."""

    msg_id: str | None
    battle_id: str
    status: Literal["active", "ended"]
    hosts: tuple[User, ...]
    duration_s: int | None
    received_at: float
    wall_ms: int


@attrs.frozen
class Supporter:
    """One supporter's battle points for a host."""

    user: User
    score: int


@attrs.frozen
class Army:
    """One host's side of a battle: score and top supporters, as the feed reports."""

    host_user_id: str
    score: int
    supporters: tuple[Supporter, ...] = ()


@attrs.frozen
class BattleArmies:
    """A ``linkMicArmies`` event: current battle points per host (not diamonds)."""

    msg_id: str | None
    battle_id: str
    armies: tuple[Army, ...]
    received_at: float
    wall_ms: int


@attrs.frozen
class StreamEnded:
    """A ``streamEnd`` event: the live stream is over."""

    msg_id: str | None
    received_at: float
    wall_ms: int


@attrs.frozen
class StreamPaused:
    """The host paused the LIVE (``livePause``, or ``controlMessage`` action 1)."""

    msg_id: str | None
    received_at: float
    wall_ms: int


@attrs.frozen
class StreamResumed:
    """A paused LIVE goes on (``liveUnpause``, or ``controlMessage`` action 2)."""

    msg_id: str | None
    received_at: float
    wall_ms: int


Event = (
    GiftSent
    | ChatMessage
    | LikeReceived
    | MemberJoined
    | SocialAction
    | ViewerCount
    | BattleStatus
    | BattleArmies
    | StreamEnded
    | StreamPaused
    | StreamResumed
)


@attrs.frozen
class Rejected:
    """A record the normalizer refused. Bad input is a value, not an exception."""

    reason: str
    """Short, stable, metric-label-safe: ``not_json``, ``too_large``, ``wrong_type``..."""
    detail: str
    """Human-readable: what was wrong and where, e.g. ``expected int @ data.repeatCount``."""
    event_type: str | None = None


@attrs.frozen
class Unknown:
    """An envelope with an event type meksd does not handle; counted and ignored."""

    event_type: str


Normalized = Event | Rejected | Unknown
