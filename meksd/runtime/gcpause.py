"""GC pauses: how long each cyclic garbage collection stopped the world.

CPython calls every function in ``gc.callbacks`` with ``("start", info)`` before a
collection and ``("stop", info)`` after it, in the thread that triggered it; the
time in between is a pause of every task. :class:`GcPauseTimer` measures it with
``time.perf_counter`` and observes it, labelled by generation, into a
:class:`~meksd.runtime.histogram.HistogramFamily`.

``gc.callbacks`` is process-wide: install with :func:`install` (or the context
manager :func:`gc_pauses_observed`) and always uninstall, so that an app, or a
test, leaves no callback behind.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from meksd.runtime.histogram import Histogram, HistogramFamily

__all__ = ["GcPauseTimer", "gc_pauses_observed", "install", "uninstall"]


class GcPauseTimer:
    """A ``gc.callbacks`` entry that times each collection by generation."""

    __slots__ = ("_by_generation", "_started", "collections")

    def __init__(self, family: HistogramFamily) -> None:
        if family.labelnames != ("generation",):
            raise ValueError("the family must have exactly one label, 'generation'")
        # Resolve the children now: the callback should allocate as little as possible.
        self._by_generation: Mapping[int, Histogram] = {
            gen: family.labels(str(gen)) for gen in range(3)
        }
        self._started: float | None = None
        self.collections = 0
        """Collections timed so far."""

    def __call__(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif phase == "stop" and self._started is not None:
            elapsed = time.perf_counter() - self._started
            self._started = None
            hist = self._by_generation.get(info.get("generation", 2))
            if hist is not None:
                hist.observe(elapsed)
                self.collections += 1


def install(timer: GcPauseTimer) -> None:
    """Add ``timer`` to ``gc.callbacks`` (once)."""
    if timer not in gc.callbacks:
        gc.callbacks.append(timer)


def uninstall(timer: GcPauseTimer) -> None:
    """Remove ``timer`` from ``gc.callbacks``; no error if it is not there."""
    while timer in gc.callbacks:
        gc.callbacks.remove(timer)


@contextmanager
def gc_pauses_observed(family: HistogramFamily) -> Iterator[GcPauseTimer]:
    """Time GC pauses into ``family`` for the duration of the ``with`` block."""
    timer = GcPauseTimer(family)
    install(timer)
    try:
        yield timer
    finally:
        uninstall(timer)
