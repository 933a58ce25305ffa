"""The ``replay`` source: a recorded feed in a JSONL file.

One line holds one envelope ``{"event": ..., "data": {...}}`` or a JSON array of
them, exactly as a live feed would send it; blank lines are skipped. Every other
line is pushed as it is (a malformed line too: rejecting it is the normalizer's job).

Pacing. A line may carry a top-level ``"ts"`` (unix milliseconds, int or float). With
``speed > 0`` the line is pushed ``(ts - ts0) / speed`` seconds after the pass
started, where ``ts0`` is the first ``ts`` of the file; lines without ``ts`` are
pushed at once. With ``speed = 0`` nothing sleeps: lines go as fast as the room takes
them (each push still checkpoints).

Looping. With ``loop = true`` the file is replayed forever, each pass paced from its
own start. Replayed verbatim, every event of pass 2 would carry a ``msgId`` the room
has already seen and be dropped by de-duplication, so by default (``loop_suffix_ids``)
passes after the first rewrite ``msgId``, ``groupId`` and ``battleId`` to
``"<id>~<pass>"``: a demo keeps counting. An empty file ends the loop.

A file that cannot be read is retried with backoff (a pass interrupted by an I/O
error starts over; de-duplication absorbs the repeated lines).
"""

from __future__ import annotations

import random
from typing import Any, BinaryIO

import orjson
import trio
from loguru import logger

from meksd.config import ReplaySourceConfig
from meksd.runtime.sources.base import (
    RecordSink,
    SourceMeter,
    SourceStatistics,
    full_jitter_delay,
)

__all__ = ["ReplaySource", "line_ts", "suffix_ids"]

_READ_CHUNK = 1 << 16
_RETRY_INITIAL_S = 1.0
_RETRY_MAX_S = 30.0
_SUFFIXED_KEYS = ("msgId", "groupId", "battleId")


def line_ts(line: bytes | str) -> float | None:
    """The line's top-level ``ts`` in milliseconds, or None (no ts, not an object,
    not JSON)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        ts = obj.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            return float(ts)
    return None


def suffix_ids(line: bytes, suffix: str) -> bytes:
    """``line`` with ``msgId``/``groupId``/``battleId`` of each envelope's ``data``
    suffixed; unchanged if it is not JSON."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    for envelope in obj if isinstance(obj, list) else [obj]:
        data = envelope.get("data") if isinstance(envelope, dict) else None
        if isinstance(data, dict):
            _suffix_in(data, suffix)
    return orjson.dumps(obj)


def _suffix_in(data: dict[str, Any], suffix: str) -> None:
    for key in _SUFFIXED_KEYS:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            data[key] = f"{value}{suffix}"


class _LineReader:
    """Reads a file in chunks and hands out its lines (without the newline).

    Reads are synchronous, 64 KiB at a time: a replay file is a local file, and a
    worker thread per chunk would buy nothing but a clock that ``autojump_clock``
    tests cannot control. Each line pushed checkpoints, so the loop stays fair.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._lines: list[bytes] = []
        self._tail = b""
        self._eof = False

    def next_line(self) -> bytes | None:
        while not self._lines:
            if self._eof:
                return None
            chunk = self._file.read(_READ_CHUNK)
            if not chunk:
                self._eof = True
                if self._tail:
                    self._lines.append(self._tail)
                    self._tail = b""
                continue
            *complete, self._tail = (self._tail + chunk).split(b"\n")
            complete.reverse()  # pop() from the end gives file order
            self._lines = complete
        return self._lines.pop()


class ReplaySource:
    """Replays a JSONL feed file, paced by its ``ts`` fields."""

    def __init__(
        self,
        config: ReplaySourceConfig,
        *,
        name: str = "replay",
        room_id: str = "",
    ) -> None:
        self._config = config
        self._meter = SourceMeter(name)
        self._rng = random.Random()
        self._log = logger.bind(room=room_id, source=name)

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        """The source's counters now. Synchronous; never checkpoints."""
        return self._meter.snapshot()

    async def run(
        self,
        send: RecordSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Replay the file (forever with ``loop``); return once it is played out."""
        task_status.started()
        cfg = self._config
        pass_no = 1
        attempt = 0
        while True:
            self._meter.state = "connecting"
            try:
                pushed = await self._play(send, pass_no)
            except OSError as exc:
                self._meter.fail(f"cannot read {cfg.path}: {exc.strerror or exc}")
                delay = full_jitter_delay(attempt, _RETRY_INITIAL_S, _RETRY_MAX_S, self._rng)
                attempt += 1
                self._meter.state = "backoff"
                self._log.bind(event="source_backoff").warning(
                    "{error}; retrying in {delay:.2f}s", error=self._meter.last_error, delay=delay
                )
                await trio.sleep(delay)
                continue
            attempt = 0
            if not cfg.loop:
                break
            if pushed == 0:
                self._log.warning("replay file {path} is empty; not looping", path=cfg.path)
                break
            pass_no += 1
        self._meter.state = "finished"
        self._log.bind(event="source_finished").info(
            "replay of {path} finished ({records} records)",
            path=cfg.path,
            records=self._meter.records,
        )

    async def _play(self, send: RecordSink, pass_no: int) -> int:
        """One pass over the file; returns the number of lines pushed."""
        cfg = self._config
        suffix = f"~{pass_no}" if pass_no > 1 and cfg.loop_suffix_ids else None
        pushed = 0
        with open(cfg.path, "rb") as file:  # noqa: ASYNC230 - see _LineReader
            self._meter.connects += 1
            self._meter.state = "connected"
            reader = _LineReader(file)
            start = trio.current_time()
            ts0: float | None = None
            while (raw := reader.next_line()) is not None:
                line = raw.strip()
                if not line:
                    continue
                if cfg.speed > 0:
                    ts = line_ts(line)
                    if ts is not None:
                        if ts0 is None:
                            ts0 = ts
                        await trio.sleep_until(start + (ts - ts0) / 1000.0 / cfg.speed)
                await self._meter.push(send, suffix_ids(line, suffix) if suffix else line)
                pushed += 1
        return pushed
