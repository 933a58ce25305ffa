"""Rate limits for log lines: a hostile feed must not flood the journal."""

from __future__ import annotations


class LogLimiter:
    """Allows one log line per key per ``interval_s``; counts what it suppressed.

    Synchronous and clock-free: the caller passes ``now``.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> bool:
        """True if a line for ``key`` may be written at ``now``."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        return True
