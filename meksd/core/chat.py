"""The chat ring: the last ``chat_history`` messages, oldest first."""

from __future__ import annotations

from collections.abc import Sequence

from meksd.model.events import ChatMessage
from meksd.model.state import ChatItem

__all__ = ["chat_item", "extend_ring", "trim_ring"]


def chat_item(message: ChatMessage) -> ChatItem:
    """A chat event as dashboards see it."""
    return ChatItem(
        msg_id=message.msg_id,
        user_id=message.user.user_id,
        unique_id=message.user.unique_id,
        nickname=message.user.nickname,
        comment=message.comment,
        wall_ms=message.wall_ms,
    )


def extend_ring(
    ring: tuple[ChatItem, ...], items: Sequence[ChatItem], limit: int
) -> tuple[ChatItem, ...]:
    """``ring`` with ``items`` appended, keeping the last ``limit`` (none if <= 0)
    and, before them, the older messages that are pinned (see :func:`trim_ring`)."""
    if limit <= 0:
        return ()
    drop = len(ring) + len(items) - limit
    if drop <= 0:
        return (*ring, *items)
    if not any(item.pinned for item in ring[:drop]):  # the usual case: a plain ring
        if len(items) >= limit:
            return tuple(items[-limit:])
        return (*ring[drop:], *items)
    return trim_ring((*ring, *items), limit)


def trim_ring(items: Sequence[ChatItem], limit: int) -> tuple[ChatItem, ...]:
    """The chat kept of ``items`` (oldest first): an item stays if it is among the
    last ``limit`` or pinned; nothing stays if ``limit <= 0``. Clients apply the same
    rule (``meksd.core.wire.apply_delta``)."""
    if limit <= 0:
        return ()
    start = len(items) - limit
    return tuple(item for i, item in enumerate(items) if i >= start or item.pinned)
