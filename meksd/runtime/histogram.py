"""Fixed-bucket histograms cheap enough to observe on the hot path.

prometheus_client's own ``Histogram`` takes a lock and resolves labels on every
observation. These take neither: :meth:`Histogram.observe` is a ``bisect`` and two
additions, and a labelled child is looked up once and kept. The collector in
:mod:`meksd.runtime.metrics` turns them into Prometheus histogram families at
scrape time.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Sequence

import attrs

__all__ = ["Histogram", "HistogramFamily", "HistogramSnapshot"]


@attrs.frozen
class HistogramSnapshot:
    """A histogram's content at one moment."""

    bounds: tuple[float, ...]
    """Bucket upper bounds (inclusive), ascending; ``+Inf`` is implied after them."""
    cumulative: tuple[int, ...]
    """Observations ``<=`` each bound, then the total (the ``+Inf`` bucket)."""
    sum: float
    """Sum of all observed values."""

    @property
    def count(self) -> int:
        """Number of observations."""
        return self.cumulative[-1]


class Histogram:
    """A fixed-bucket histogram cheap enough for the hot path.

    :meth:`observe` is a ``bisect`` and two additions: no lock, no allocation. It is
    meant for one thread (the trio thread); an observation made concurrently from
    another thread (a GC callback in a worker thread) may, rarely, be lost, never
    corrupt anything.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError("buckets must be a non-empty sequence of finite bounds")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("buckets must be strictly ascending")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value`` (seconds). Synchronous; O(log buckets)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        """The cumulative bucket counts and sum now."""
        cumulative: list[int] = []
        running = 0
        for n in self._counts:
            running += n
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), self._sum)


class HistogramFamily:
    """Histograms of one metric, one per combination of label values.

    Look a child up once with :meth:`labels` and keep it; its ``observe`` is then
    as cheap as an unlabelled :class:`Histogram`'s.
    """

    def __init__(self, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        Histogram(self.buckets)  # validate once, here
        self._children: dict[tuple[str, ...], Histogram] = {}

    def labels(self, *values: str) -> Histogram:
        """The histogram for these label values (created on first use)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"expected {len(self.labelnames)} label values, got {len(values)}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Histogram(self.buckets)
        return child

    def remove(self, *values: str) -> None:
        """Forget the child for these label values (e.g. a removed room)."""
        self._children.pop(values, None)

    def children(self) -> list[tuple[tuple[str, ...], Histogram]]:
        """Every child with its label values, sorted by label values."""
        return sorted(self._children.items(), key=lambda item: item[0])
