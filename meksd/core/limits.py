"""Per-connection message rate: a token bucket with a memory of refusals.

Pure: the state is a frozen value and :func:`pass_message` returns the next one with
its verdict; the caller passes the time. A dashboard may send ``burst`` messages at
once and ``rate`` per second after that. A message beyond that is refused
(``limited``) and adds a *strike*; strikes drain at ``rate`` per second. When they
exceed ``burst`` the verdict is ``abuse`` and the connection is closed.

So a client that sends at up to twice the allowed rate sees some messages refused
but stays connected; one that keeps sending faster than that, after being told, is
closed within about ``burst / (sent - 2 * rate)`` seconds.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

__all__ = ["MessageGate", "RateLimit", "Verdict", "new_gate", "pass_message"]

Verdict: TypeAlias = Literal["ok", "limited", "abuse"]


@attrs.frozen
class RateLimit:
    """The limit: ``rate`` messages per second, bursts of up to ``burst``."""

    rate: float
    burst: int


@attrs.frozen
class MessageGate:
    """One connection's bucket."""

    tokens: float
    """Messages that may be sent now without refusal (at most ``burst``)."""
    strikes: float
    """Refusals not yet drained; more than ``burst`` is abuse."""
    updated: float
    """When ``tokens`` and ``strikes`` were last brought up to date."""


def new_gate(limit: RateLimit, now: float) -> MessageGate:
    """A full bucket and no strikes."""
    return MessageGate(tokens=float(limit.burst), strikes=0.0, updated=now)


def pass_message(gate: MessageGate, limit: RateLimit, now: float) -> tuple[MessageGate, Verdict]:
    """Take one message at ``now``: the gate after it and whether it passes."""
    elapsed = max(0.0, now - gate.updated)
    refill = elapsed * limit.rate
    tokens = min(float(limit.burst), gate.tokens + refill)
    strikes = max(0.0, gate.strikes - refill)
    if tokens >= 1.0:
        return MessageGate(tokens - 1.0, strikes, now), "ok"
    strikes += 1.0
    verdict: Verdict = "abuse" if strikes > limit.burst else "limited"
    return MessageGate(tokens, strikes, now), verdict
