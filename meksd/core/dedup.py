"""Bounded msgId memory in sealed segments: O(log n) per insert, no clock.

Feeds re-deliver on reconnect and replay recent history on connect, so every event
that carries a ``msgId`` is checked against the ids seen recently. The memory is a
:class:`~meksd.model.state.Dedup`: ids go into the open segment (``current``); when
it holds :func:`segment_size` ids it is sealed (``sealed``, newest first) and a new
one opens; the oldest sealed segments are forgotten so that at most ``capacity`` ids
are remembered. A lookup checks every segment, so at least the last ``capacity -
segment_size(capacity)`` (15/16 of them) and at most the last ``capacity`` ids are
remembered.

Segments are numbered (``Dedup.segment`` is the open one's number; ``sealed[i]`` is
number ``segment - 1 - i``) and a sealed segment never changes again. That is what
lets the store write the memory incrementally: a sealed segment once, the open one
while it fills (``meksd.core.persist``).
"""

from __future__ import annotations

from typing import Final

import immutables

from meksd.model.state import Dedup

__all__ = ["SEGMENTS", "new_dedup", "remember", "resize", "seen", "segment_size", "segments"]

SEGMENTS: Final = 16
"""A full memory spans this many segments (the open one included)."""


def segment_size(capacity: int) -> int:
    """Ids in one segment of a memory of ``capacity`` ids."""
    return max(1, capacity // SEGMENTS)


def new_dedup(capacity: int) -> Dedup:
    """An empty memory for about ``capacity`` ids (at least 2)."""
    return Dedup(capacity=max(2, capacity))


def seen(dedup: Dedup, msg_id: str) -> bool:
    """Whether ``msg_id`` is remembered."""
    if msg_id in dedup.current:
        return True
    for segment in dedup.sealed:  # noqa: SIM110 - a loop beats any() here: hot path
        if msg_id in segment:
            return True
    return False


def remember(dedup: Dedup, msg_id: str) -> Dedup:
    """``dedup`` with ``msg_id`` added, sealing the open segment when it is full."""
    current = dedup.current.set(msg_id, None)
    if len(current) < segment_size(dedup.capacity):
        return Dedup(dedup.capacity, current, dedup.sealed, dedup.segment)
    sealed = _trim((current, *dedup.sealed), dedup.capacity)
    return Dedup(dedup.capacity, immutables.Map(), sealed, dedup.segment + 1)


def resize(dedup: Dedup, capacity: int) -> Dedup:
    """The same memory under a new capacity (a reload): the oldest segments that no
    longer fit are forgotten; segments already sealed keep their size."""
    capacity = max(2, capacity)
    if capacity == dedup.capacity:
        return dedup
    return Dedup(capacity, dedup.current, _trim(dedup.sealed, capacity), dedup.segment)


def segments(dedup: Dedup) -> dict[int, immutables.Map[str, None]]:
    """Every segment by number, the open one included (empty or not)."""
    out = {dedup.segment: dedup.current}
    for i, segment in enumerate(dedup.sealed):
        out[dedup.segment - 1 - i] = segment
    return out


def _trim(
    sealed: tuple[immutables.Map[str, None], ...], capacity: int
) -> tuple[immutables.Map[str, None], ...]:
    """The newest sealed segments that fit in ``capacity`` next to a full open one
    (at least one, so a tiny memory still remembers the last segment)."""
    total = segment_size(capacity)
    for i, segment in enumerate(sealed):
        total += len(segment)
        if total > capacity and i > 0:
            return sealed[:i]
    return sealed
