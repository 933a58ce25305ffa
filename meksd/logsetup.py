"""Logging: one JSON object per line on stderr, through one synchronous loguru sink.

Each line is::

    <6>{"ts":"2024-05-01T12:00:03.250Z","level":"INFO","msg":"...","room":"alice",...}

* ``ts`` (ISO-8601, UTC, milliseconds), ``level`` (loguru's level name), ``msg``;
* the context fields ``room``, ``conn``, ``source``, ``event``, when bound
  (``logger.bind(room=...)``) or passed (``logger.info("...", event="x")``);
* every other extra, flattened into the object; a value JSON cannot hold is
  written as its ``str()``; an extra named like a core field (``ts``, ``level``,
  ``msg``, ``exc``, ``traceback``) is renamed ``extra_<name>``;
* ``exc`` (``"ValueError: boom"``) and ``traceback`` (the formatted traceback)
  when the record carries an exception.

The ``<N>`` prefix is the syslog priority of the level (`PRIORITIES`), written only
when stderr is connected to journald (``$JOURNAL_STREAM`` names stderr's device
and inode, as ``systemd.exec(5)`` describes): journald strips it and files the line
at that priority, so ``journalctl -p warning`` works. ``meksd logs`` strips it too.

**Synchronous.** The sink is a plain callable (never ``enqueue=True``, never a
coroutine: under trio both lose records): a line is on stderr when the logging
call returns. Writing never raises out of a logging call: a closed or broken
stderr is counted (`LogStatistics.write_errors`) and the line is lost.

**Rate limit.** A hostile feed must not flood the journal. Records with the same
key — (level, ``event`` or else the call site standing for the message
template, ``room``) — pass at most *rate_limit* times per *rate_interval_s*
window (5 per 10 s by default), counted from the key's first record. The rest are
dropped before any formatting. When the window has passed, one summary line at
the same level says ``"suppressed K similar lines"`` with the key's fields,
``suppressed``, ``window_s`` and ``last_msg`` (the last dropped message). Summaries
are written synchronously by the next logging call after the window ends, by
`flush_suppressed`, and at exit. Time comes from *clock* (``time.monotonic``).

The standard library's `logging` (trio-websocket, anything else that uses it) is
routed into loguru by `InterceptHandler`, at WARNING and above, with the stdlib
logger's name as the ``logger`` field.
"""

from __future__ import annotations

import atexit
import collections
import inspect
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

import attrs
import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = [
    "CONTEXT_FIELDS",
    "PRIORITIES",
    "InterceptHandler",
    "JsonSink",
    "LogStatistics",
    "configure_logging",
    "flush_suppressed",
    "journal_stream_matches",
    "json_line",
    "statistics",
]

PRIORITIES: Final[Mapping[str, int]] = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 6,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}
"""syslog priority (``<N>`` prefix) of each loguru level: debug 7, info 6, warning 4,
err 3, crit 2."""

CONTEXT_FIELDS: Final = ("room", "conn", "source", "event")
"""Extras written right after ``msg``, in this order, when present."""

_RESERVED: Final = frozenset(("ts", "level", "msg", "exc", "traceback"))
_CONTEXT: Final = frozenset(CONTEXT_FIELDS)
_MAX_KEYS: Final = 4096


@attrs.frozen
class LogStatistics:
    """What the JSON sink did since `configure_logging` installed it."""

    lines_written: int
    """Lines written to stderr: records and rate-limit summaries."""
    write_errors: int
    """Lines lost because stderr could not be written (closed, broken pipe)."""
    suppressed: int
    """Records dropped by the rate limit."""


# --------------------------------------------------------------------------- lines


def json_line(message: Message) -> bytes:
    """The JSON object (with its newline, without a priority prefix) for one message."""
    return _dumps(_record_object(message.record)) + b"\n"


def _record_object(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": _timestamp(record["time"]),
        "level": record["level"].name,
        "msg": record["message"],
    }
    extra = record["extra"]
    for key in CONTEXT_FIELDS:
        value = extra.get(key)
        if value is not None:
            out[key] = value
    for key, value in extra.items():
        if key not in _CONTEXT:
            out[f"extra_{key}" if key in _RESERVED else key] = value
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        try:
            out["exc"] = "".join(traceback.format_exception_only(exc.type, exc.value)).strip()
            out["traceback"] = "".join(
                traceback.format_exception(exc.type, exc.value, exc.traceback)
            )
        except Exception:  # a __str__ that raises, say: keep the type at least
            out["exc"] = getattr(exc.type, "__name__", str(exc.type))
    return out


def _timestamp(when: datetime) -> str:
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _default(obj: object) -> str:
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__}>"


def _dumps(obj: dict[str, Any]) -> bytes:
    """Serialize *obj*; never raises."""
    try:
        return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except Exception:  # lone surrogates, ints beyond 64 bits, odd keys, cycles
        pass
    try:
        text = json.dumps(
            obj, default=_default, skipkeys=True, ensure_ascii=False, separators=(",", ":")
        )
        # Lone surrogates (which orjson refuses) become U+FFFD; a pair becomes its character.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text.encode("utf-8")
    except Exception as exc:
        minimal = {k: _default(obj.get(k)) for k in ("ts", "level", "msg")}
        minimal["log_error"] = f"unserializable record: {_default(exc)}"
        return json.dumps(minimal, separators=(",", ":")).encode("ascii")


def _priority(level_name: str, level_no: int) -> int:
    known = PRIORITIES.get(level_name)
    if known is not None:
        return known
    if level_no >= 50:
        return 2
    if level_no >= 40:
        return 3
    if level_no >= 30:
        return 4
    return 6 if level_no >= 20 else 7


def journal_stream_matches(
    environ: Mapping[str, str] = os.environ, stream: IO[str] | None = None
) -> bool:
    """Whether *stream* (default: stderr) is the journald stream ``$JOURNAL_STREAM`` names.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a service whose stderr goes to
    the journal; a child that inherited the variable but writes elsewhere (a shell
    redirection, a pipe to another program) must not be taken for it.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev_text, ino_text = value.split(":")
        expected = (int(dev_text), int(ino_text))
        fd = (stream if stream is not None else sys.stderr).fileno()
        st = os.fstat(fd)
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == expected


# --------------------------------------------------------------------------- sink


@attrs.define(slots=True)
class _Window:
    start: float
    passed: int = 1
    suppressed: int = 0
    last_msg: str = ""


_Key = tuple[str, str, str, Any]
"""(level, "event" or "site", the event or call site, room)."""


class JsonSink:
    """The loguru sink (`__call__`) and its rate-limiting filter (`admit`).

    Both run synchronously in the logging call. A lock makes the sink safe to call
    from other threads (stdlib logging from a worker thread) and from
    `flush_suppressed`.
    """

    def __init__(
        self,
        *,
        journal: bool = False,
        rate_limit: int | None = 5,
        rate_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        stream: IO[str] | None = None,
    ) -> None:
        """*journal*: prefix lines with ``<N>``. *rate_limit*: records per key per
        *rate_interval_s* (None: no limit). *stream*: where to write (default:
        ``sys.stderr``, looked up at each line so that redirection works)."""
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be >= 1 or None, got {rate_limit}")
        if not rate_interval_s > 0:
            raise ValueError(f"rate_interval_s must be > 0, got {rate_interval_s}")
        self.journal = journal
        self.rate_limit = rate_limit
        self.rate_interval_s = rate_interval_s
        self._clock = clock
        self._stream = stream
        self._lock = threading.RLock()
        self._windows: collections.OrderedDict[_Key, _Window] = collections.OrderedDict()
        self._lines = 0
        self._errors = 0
        self._suppressed = 0

    def statistics(self) -> LogStatistics:
        """Counts since this sink was created."""
        return LogStatistics(
            lines_written=self._lines, write_errors=self._errors, suppressed=self._suppressed
        )

    # -- loguru interface

    def __call__(self, message: Message) -> None:
        """Write one record's line. Never raises."""
        try:
            record = message.record
            line = _dumps(_record_object(record))
            self._write(record["level"].name, record["level"].no, line)
        except Exception:
            self._errors += 1

    def admit(self, record: Record) -> bool:
        """The filter: False when the record's key is over its rate. Never raises.

        Also writes the summaries of windows that have ended, before the record.
        """
        if self.rate_limit is None:
            return True
        try:
            with self._lock:
                now = self._clock()
                self._expire(now)
                key = self._key(record)
                window = self._windows.get(key)
                if window is None:
                    if len(self._windows) >= _MAX_KEYS:
                        self._summarize(*self._windows.popitem(last=False))
                    self._windows[key] = _Window(start=now)
                    return True
                if window.passed < self.rate_limit:
                    window.passed += 1
                    return True
                window.suppressed += 1
                window.last_msg = record["message"]
                self._suppressed += 1
                return False
        except Exception:
            return True

    # -- rate limit

    @staticmethod
    def _key(record: Record) -> _Key:
        extra = record["extra"]
        event = extra.get("event")
        room = extra.get("room")
        if not isinstance(room, str | int | None):
            room = _default(room)
        if event is not None:
            return (record["level"].name, "event", _default(event), room)
        site = f"{record['name']}:{record['function']}:{record['line']}"
        return (record["level"].name, "site", site, room)

    def _expire(self, now: float) -> None:
        windows = self._windows
        while windows:
            key, window = next(iter(windows.items()))
            if now - window.start < self.rate_interval_s:
                break
            del windows[key]
            self._summarize(key, window)

    def _summarize(self, key: _Key, window: _Window) -> None:
        if not window.suppressed:
            return
        level, kind, what, room = key
        out: dict[str, Any] = {
            "ts": _timestamp(datetime.now(UTC)),
            "level": level,
            "msg": f"suppressed {window.suppressed} similar lines",
        }
        if room is not None:
            out["room"] = room
        out[kind] = what
        out["suppressed"] = window.suppressed
        out["window_s"] = self.rate_interval_s
        out["last_msg"] = window.last_msg
        try:
            level_no = logger.level(level).no
        except Exception:
            level_no = 20
        self._write(level, level_no, _dumps(out))

    def flush(self, *, final: bool = False) -> None:
        """Write the summaries of ended windows (of every window if *final*). Never raises."""
        try:
            with self._lock:
                if final:
                    while self._windows:
                        self._summarize(*self._windows.popitem(last=False))
                else:
                    self._expire(self._clock())
        except Exception:
            self._errors += 1

    # -- output

    def _write(self, level_name: str, level_no: int, body: bytes) -> None:
        if self.journal:
            body = b"<%d>%b" % (_priority(level_name, level_no), body)
        text = body.decode("utf-8", "replace") + "\n"
        with self._lock:
            stream = self._stream if self._stream is not None else sys.stderr
            try:
                if stream is None:
                    raise ValueError("no stderr")
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # BrokenPipeError, closed file, no stderr
                self._errors += 1
            else:
                self._lines += 1


# --------------------------------------------------------------------------- stdlib


class InterceptHandler(logging.Handler):
    """A `logging` handler that hands records to loguru (level WARNING by default).

    The record keeps its level, message, exception and call site; the stdlib
    logger's name is the ``logger`` field.
    """

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            # Find the caller of the logging call, past the logging module's frames.
            frame, depth = inspect.currentframe(), 0
            while frame is not None and (
                depth == 0 or frame.f_code.co_filename == logging.__file__
            ):
                frame = frame.f_back
                depth += 1
            exc_info = record.exc_info if record.exc_info and record.exc_info[0] else None
            # No format arguments: the stdlib message may contain braces.
            logger.bind(logger=record.name).opt(depth=depth, exception=exc_info).log(
                level, record.getMessage()
            )
        except Exception:
            self.handleError(record)


# --------------------------------------------------------------------------- setup

_lock = threading.Lock()
_sink: JsonSink | None = None
_atexit_registered = False


def configure_logging(
    level: str = "INFO",
    *,
    journal: bool | None = None,
    rate_limit: int | None = 5,
    rate_interval_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    stream: IO[str] | None = None,
) -> JsonSink:
    """Make loguru write JSON lines to stderr at *level* and above; return the sink.

    Removes every loguru handler (its default stderr one included), so calling it
    again (a SIGHUP changing the level, tests) replaces the sink instead of adding
    a second one; the old sink's pending summaries are written first. Routes the
    stdlib `logging` into loguru at WARNING and above (one `InterceptHandler` on
    the root logger, however often this is called).

    Raises `ValueError` for an unknown *level*, leaving the logging as it was.

    *journal*: write ``<N>`` priority prefixes; None (default) decides by
    `journal_stream_matches`. *rate_limit* records per key per *rate_interval_s*
    (None: unlimited), timed by *clock*. *stream*: default ``sys.stderr``.
    """
    global _sink, _atexit_registered
    level = logger.level(level.upper()).name  # ValueError before anything is removed
    if journal is None:
        journal = journal_stream_matches(stream=stream)
    sink = JsonSink(
        journal=journal,
        rate_limit=rate_limit,
        rate_interval_s=rate_interval_s,
        clock=clock,
        stream=stream,
    )
    with _lock:
        old, _sink = _sink, sink
        if old is not None:
            old.flush(final=True)
        logger.remove()
        logger.add(
            sink,
            level=level,
            format="{message}",
            filter=sink.admit,
            colorize=False,
            enqueue=False,
            backtrace=False,
            diagnose=False,
            catch=True,
        )
        root = logging.getLogger()
        if not any(isinstance(h, InterceptHandler) for h in root.handlers):
            root.addHandler(InterceptHandler())
        if not _atexit_registered:
            atexit.register(_flush_at_exit)
            _atexit_registered = True
    return sink


def flush_suppressed() -> None:
    """Write the summary lines of rate-limit windows that have ended.

    Logging calls do this on their own; call it periodically (say once a second)
    so that a summary is not held back while nothing else is logged.
    """
    sink = _sink
    if sink is not None:
        sink.flush()


def statistics() -> LogStatistics:
    """The current sink's counts (zeros before `configure_logging`)."""
    sink = _sink
    if sink is None:
        return LogStatistics(lines_written=0, write_errors=0, suppressed=0)
    return sink.statistics()


def _flush_at_exit() -> None:
    sink = _sink
    if sink is not None:
        sink.flush(final=True)
