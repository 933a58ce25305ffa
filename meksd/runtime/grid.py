"""Shared instants for housekeeping timers: one wake-up of the process for all of them.

On this kind of VM a wake-up of a process that slept a few milliseconds costs far more
CPU than the chore it wakes for (trio: ~270-350 us after 16 ms asleep, against ~100 us
for a bare ``time.sleep``; BENCHMARKS.md, session 8). Periodic chores whose exact phase
does not matter -- each room's failover check, the store's flush, the log summaries,
the status line -- therefore wait until an instant of a grid shared by the whole
process (multiples of a step of trio's clock, see :func:`next_on_grid`) instead of a
fixed time after their own last wake-up: rooms started or restarted at different
times, and timers that drift by each wake-up's lateness, would otherwise spread over
the second, one wake-up per room four times a second.

Not for what must keep its own phase: the rooms' ticks (the frame budget) and the
loop-lag sampler, whose wake-ups would otherwise measure the chores due at the same
instant rather than the loop. Nor for dashboards' heartbeats: put on a 1 s grid, the
pings of dashboards that connected over a second or two went out together, and their
pongs came back together, a burst that raised point 3's worst latency from 31-54 to
49-97 ms (BENCHMARKS.md, session 8).
"""

from __future__ import annotations

import math

__all__ = ["next_on_grid"]


def next_on_grid(after: float, step: float) -> float:
    """The first multiple of ``step`` later than ``after`` (on trio's clock).

    Timers that wait for it with the same ``step`` (or steps that divide each other,
    such as 0.25 and 1.0, exact in binary) expire at the same float, hence in the same
    turn of trio's loop.
    """
    if not step > 0:
        raise ValueError("step must be > 0")
    instant = (math.floor(after / step) + 1) * step
    return instant if instant > after else instant + step  # float rounding: never now
