"""Which of a room's sources feeds it: the failover rules, as a pure state machine.

A room lists its sources in order of preference. Exactly one is *active*: only its
records reach the room. The shell (``meksd.runtime.failover``) runs the active source
and every source preferred to it (those are retried in the background: *probes*);
sources after the active one do not run. The shell reports what it sees, with the
time as an argument, and performs the :data:`Action` values returned:

``on_record(sel, i, now, policy)``
    Source ``i`` read a record. The active source is healthy again (its failure
    count resets). A preferred source that is not held down is *taken back* (a
    failback): it becomes active and every source after it stops. A record from
    any other source is not forwarded: the active source delivers the feed.
``on_failure(sel, i, now, policy, live)``
    Source ``i`` failed (a refused connect, a dropped connection, a bad response).
    ``failover_after`` failures of the active source in a row, with no record in
    between, fail over to the next source.
``on_finished(sel, i, now, policy)``
    A finite source (a replay without ``loop``) played out; if it was active, the
    next source takes over. It is never restarted.
``on_tick(sel, now, policy, live)``
    A *stall*: the active source, of a kind that can stall (network sources), read
    nothing for ``stall_s`` while the room is live. It fails over to the next source
    and is restarted (a connection that stays open and silent may never recover by
    itself); with no next source, it is restarted in place. :func:`stall_deadline`
    says when to call this.

Nothing fails over while the room's stream has ended: its silence is explained, and
sources then pace themselves slowly (``ended_backoff_s``). A stall counts only while
the room is live: a paused LIVE may be silent.

*Flapping*: a source that loses the active role soon after getting it (within
``FLAP_FACTOR * stall_s``) twice in a row is *held down*: it cannot be taken back for
``stall_s``, then twice that after each further flap, at most
``MAX_HOLDDOWN_S``. A source that stayed active longer is forgiven. This keeps a feed
that replays its history on every connect and then goes silent from switching the
room back and forth every ``stall_s``.

Everything here is synchronous, has no clock and no I/O, and returns new frozen
values.
"""

from __future__ import annotations

import math
from typing import Literal, TypeVar

import attrs

from meksd.model.state import LiveStatus

__all__ = [
    "FLAP_FACTOR",
    "MAX_HOLDDOWN_S",
    "RECORD_RESOLUTION_S",
    "Action",
    "Policy",
    "Restart",
    "Selection",
    "Switch",
    "on_failure",
    "on_finished",
    "on_record",
    "on_tick",
    "stall_deadline",
    "start",
]

FLAP_FACTOR = 3.0
"""A source demoted less than ``FLAP_FACTOR * stall_s`` after it became active flapped."""
MAX_HOLDDOWN_S = 300.0
"""Longest time a flapping source is kept from being taken back."""
RECORD_RESOLUTION_S = 0.25
"""Records of the active source closer than this, or than 1 % of ``stall_s`` if that
is less, to the last one remembered do not move its stall clock (a stall may be seen
this much early); spares a new value per record in a busy room (a room at 50 records
a second with the default 20 s ``stall_s`` makes one every 0.2 s, not 50)."""


@attrs.frozen
class Policy:
    """A room's failover settings (from ``[[rooms]]``)."""

    stall_s: float
    """Silence of the active source (while live) that counts as a stall."""
    failover_after: int
    """Failures of the active source in a row that make the room fail over."""


@attrs.frozen
class Switch:
    """The active source changes from ``old`` to ``new``."""

    old: int
    new: int
    kind: Literal["failover", "failback"]
    """``failover``: away from a failing source, to the next one; ``failback``: back to
    a preferred source that delivers again."""
    reason: str
    """For operators, e.g. ``stalled: no record for 20s``."""


@attrs.frozen
class Restart:
    """Stop source ``index`` and start it afresh (it stalled)."""

    index: int
    reason: str


Action = Switch | Restart


@attrs.frozen
class Selection:
    """The failover state of one room's sources."""

    watch: tuple[bool, ...]
    """Per source: whether it can stall (network sources); one entry per source."""
    active: int = 0
    """Index of the source whose records reach the room."""
    activated_at: float = 0.0
    """When the active source became active."""
    since: float = 0.0
    """Start of the active source's stall clock: activation, or its last restart."""
    last_record: float | None = None
    """When the active source last read a record (since ``since``), if it did."""
    failures: int = 0
    """Failures of the active source since its last record or activation."""
    finished: frozenset[int] = frozenset()
    """Sources that played out (never restarted)."""
    flaps: tuple[int, ...] = ()
    """Per source: short tenures as the active source, in a row."""
    held_until: tuple[float, ...] = ()
    """Per source: not taken back before this time."""

    @property
    def running(self) -> frozenset[int]:
        """The sources that should run now: the active one and every preferred one
        (the probes), except those that finished."""
        return frozenset(range(self.active + 1)) - self.finished


def start(watch: tuple[bool, ...], now: float) -> Selection:
    """The first source active at ``now``; ``watch`` has one entry per source (at
    least one)."""
    if not watch:
        raise ValueError("a selection needs at least one source")
    n = len(watch)
    return Selection(
        watch=watch,
        activated_at=now,
        since=now,
        flaps=(0,) * n,
        held_until=(-math.inf,) * n,
    )


def on_record(
    sel: Selection, index: int, now: float, policy: Policy
) -> tuple[Selection, list[Action]]:
    """Source ``index`` read a record at ``now``. Forward the record only if
    ``index`` is the returned selection's ``active``."""
    if index == sel.active:
        last = sel.last_record
        if (
            sel.failures == 0
            and last is not None
            and now - last < min(RECORD_RESOLUTION_S, policy.stall_s / 100)
        ):
            return sel, []  # the stall clock need not move for every record
        return attrs.evolve(sel, last_record=now, failures=0), []
    if index > sel.active or index in sel.finished or now < sel.held_until[index]:
        return sel, []
    switch = Switch(sel.active, index, "failback", "delivering again")
    new = attrs.evolve(sel, active=index, activated_at=now, since=now, last_record=now, failures=0)
    return new, [switch]


def on_failure(
    sel: Selection, index: int, now: float, policy: Policy, live: LiveStatus
) -> tuple[Selection, list[Action]]:
    """Source ``index`` failed at ``now``. Only the active source's failures count,
    and none while the stream has ended."""
    if index != sel.active or live == "ended":
        return sel, []
    failures = sel.failures + 1
    sel = attrs.evolve(sel, failures=failures)
    if failures < policy.failover_after:
        return sel, []
    return _fail_over(sel, now, policy, f"{failures} failures in a row")


def on_finished(
    sel: Selection, index: int, now: float, policy: Policy
) -> tuple[Selection, list[Action]]:
    """Source ``index`` played out at ``now``; the next source takes over if it was
    active."""
    sel = attrs.evolve(sel, finished=sel.finished | {index})
    if index != sel.active:
        return sel, []
    return _fail_over(sel, now, policy, "feed played out")


def stall_deadline(sel: Selection, policy: Policy, live: LiveStatus) -> float | None:
    """When :func:`on_tick` would act if nothing is read meanwhile; None if it never
    would (the room is not live, or the active source cannot stall)."""
    if live != "live" or not sel.watch[sel.active] or sel.active in sel.finished:
        return None
    last = sel.since if sel.last_record is None else max(sel.since, sel.last_record)
    return last + policy.stall_s


def on_tick(
    sel: Selection, now: float, policy: Policy, live: LiveStatus
) -> tuple[Selection, list[Action]]:
    """Check the active source for a stall at ``now``."""
    deadline = stall_deadline(sel, policy, live)
    if deadline is None or now < deadline:
        return sel, []
    reason = f"stalled: no record for {policy.stall_s:g}s"
    old = sel.active
    new, actions = _fail_over(sel, now, policy, reason)
    if new.active == old:
        new = attrs.evolve(new, since=now, last_record=None)
    return new, [*actions, Restart(old, reason)]


def _fail_over(
    sel: Selection, now: float, policy: Policy, reason: str
) -> tuple[Selection, list[Action]]:
    """Hand the active role to the next source that has not finished, if any."""
    old = sel.active
    nxt = next((i for i in range(old + 1, len(sel.watch)) if i not in sel.finished), None)
    if nxt is None:
        return sel, []
    short = now - sel.activated_at < FLAP_FACTOR * policy.stall_s
    flaps = sel.flaps[old] + 1 if short else 0
    hold = 0.0 if flaps < 2 else min(policy.stall_s * 2.0 ** (flaps - 2), MAX_HOLDDOWN_S)
    new = attrs.evolve(
        sel,
        active=nxt,
        activated_at=now,
        since=now,
        last_record=None,
        failures=0,
        flaps=_put(sel.flaps, old, flaps),
        held_until=_put(sel.held_until, old, now + hold),
    )
    return new, [Switch(old, nxt, "failover", reason)]


_T = TypeVar("_T")


def _put(values: tuple[_T, ...], index: int, value: _T) -> tuple[_T, ...]:
    return (*values[:index], value, *values[index + 1 :])
