"""What a source hands to the normalizer: untrusted bytes plus when they arrived."""

from __future__ import annotations

import attrs


@attrs.frozen
class RawRecord:
    """One message as received from a feed, before anything trusts it.

    A message may hold one envelope ``{"event": ..., "data": {...}}`` or a JSON
    array of them.
    """

    payload: bytes | str
    """The message exactly as the feed sent it."""
    received_at: float
    """``trio.current_time()`` when it was read; drives streak timeouts and latency."""
    wall_ms: int
    """Unix time in milliseconds when it was read; shown to operators."""
    source: str = ""
    """Name of the source that read it (``"websocket:0"``, ``"simulator"``...)."""
