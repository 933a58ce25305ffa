"""Logging: one JSON object per line on stderr, through one synchronous loguru sink.

Each line has ``ts`` (ISO-8601, UTC, milliseconds), ``level``, ``msg``, then the
record's bound extras (``room``, ``conn``, ``source``, ``event``...) flattened into the
object, and ``exc`` with the formatted traceback when there is one. The sink writes
synchronously (no ``enqueue``): a line is on stderr when the logging call returns.
"""

from __future__ import annotations

import sys
import traceback
from datetime import UTC
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["configure_logging", "json_line"]

_RESERVED = ("ts", "level", "msg", "exc")


def json_line(message: Message) -> bytes:
    """The JSON line (with its newline) for one loguru message."""
    record = message.record
    ts = record["time"].astimezone(UTC).isoformat(timespec="milliseconds")
    out: dict[str, Any] = {
        "ts": ts.replace("+00:00", "Z"),
        "level": record["level"].name,
        "msg": record["message"],
    }
    for key, value in record["extra"].items():
        out[f"extra_{key}" if key in _RESERVED else key] = value
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        out["exc"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return orjson.dumps(out, default=str) + b"\n"


def _sink(message: Message) -> None:
    stream = sys.stderr  # looked up per call, so redirection (and pytest capture) works
    stream.write(json_line(message).decode("utf-8"))
    stream.flush()


def configure_logging(level: str = "INFO") -> None:
    """Replace loguru's handlers with the JSON-lines stderr sink at ``level``."""
    logger.remove()
    logger.add(_sink, level=level.upper(), format="{message}", colorize=False, enqueue=False)
