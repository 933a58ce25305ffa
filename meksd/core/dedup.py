"""Bounded msgId memory: two generations, O(log n) per insert, no clock.

Feeds re-deliver on reconnect and replay recent history on connect, so every event
that carries a ``msgId`` is checked against the ids seen recently. The memory is a
:class:`~meksd.model.state.Dedup`: ids go into ``current``; when it holds
``capacity // 2`` ids it becomes ``previous`` and the old ``previous`` is forgotten.
A lookup checks both, so at least the last ``capacity // 2`` and at most the last
``capacity`` ids are remembered.
"""

from __future__ import annotations

import immutables

from meksd.model.state import Dedup

__all__ = ["new_dedup", "remember", "seen"]


def new_dedup(capacity: int) -> Dedup:
    """An empty memory for about ``capacity`` ids (at least 2)."""
    return Dedup(capacity=max(2, capacity))


def seen(dedup: Dedup, msg_id: str) -> bool:
    """Whether ``msg_id`` is remembered."""
    return msg_id in dedup.current or msg_id in dedup.previous


def remember(dedup: Dedup, msg_id: str) -> Dedup:
    """``dedup`` with ``msg_id`` added, rotating generations when ``current`` is full."""
    current = dedup.current.set(msg_id, None)
    if len(current) < max(1, dedup.capacity // 2):
        return Dedup(capacity=dedup.capacity, current=current, previous=dedup.previous)
    return Dedup(capacity=dedup.capacity, current=immutables.Map(), previous=current)
