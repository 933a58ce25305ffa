"""The chat ring: the last ``chat_history`` messages, oldest first."""

from __future__ import annotations

from collections.abc import Sequence

from meksd.model.events import ChatMessage
from meksd.model.state import ChatItem

__all__ = ["chat_item", "extend_ring"]


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
    """``ring`` with ``items`` appended, keeping the last ``limit`` (none if <= 0)."""
    if limit <= 0:
        return ()
    if len(items) >= limit:
        return tuple(items[-limit:])
    drop = max(0, len(ring) + len(items) - limit)
    return (*ring[drop:], *items)
