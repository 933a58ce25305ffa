"""``meksd logs``: read meksd's JSON log lines the way a person reads logs.

meksd logs one JSON object per line on stderr (``ts``, ``level``, ``msg``, and the
context fields ``room``, ``conn``, ``source``, plus any extras), each line
prefixed with a syslog priority ``<N>`` that journald turns into the entry's
priority. This module turns such lines back into one readable line each::

    journalctl -u meksd -o cat | meksd logs --level warning
    meksd logs --room alice --follow /var/log/meksd.jsonl

prints::

    12:00:03.250 WARNING  [alice c17 ws-main] dashboard lagged  behind=412 snapshot=true

Lines are taken as they come and never make the reader fail:

* a ``<N>`` priority prefix is removed (and used as the level when a record has
  none);
* a line that is not a JSON object is printed as it is, whatever the filters,
  because it is most likely something the logger did not write, such as a
  traceback from a crash;
* control characters inside JSON values (a chat message from a feed is
  untrusted text) are shown escaped, so they cannot drive the terminal.

The time is printed as recorded in ``ts``, in that timestamp's own UTC offset.
Colour is used when stdout is a terminal (``--color`` overrides; ``NO_COLOR``
turns it off).

The CLI wires it as ``add_arguments(subparser)`` then ``run(args)``; `main` is the
stand-alone entry point (``python -m meksd.logview``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from datetime import UTC, datetime
from typing import IO, Any, Final

import attrs

__all__ = [
    "LEVELS",
    "ViewOptions",
    "add_arguments",
    "follow_lines",
    "format_line",
    "main",
    "parse_level",
    "run",
]

LEVELS: Final[Mapping[str, int]] = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}
"""loguru's level names and numbers, least to most severe."""

_ALIASES: Final = {"WARN": "WARNING", "ERR": "ERROR", "CRIT": "CRITICAL", "FATAL": "CRITICAL"}

# syslog severity (priority & 7) -> level name, for records without "level".
_SEVERITY_LEVELS: Final = ("CRITICAL",) * 3 + ("ERROR", "WARNING", "INFO", "INFO", "DEBUG")

_CONTEXT_FIELDS: Final = ("room", "conn", "source")
_KNOWN_FIELDS: Final = frozenset(("ts", "level", "msg", *_CONTEXT_FIELDS))

_PRIORITY_PREFIX = re.compile(r"<(\d{1,3})>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NEEDS_QUOTES = re.compile(r"[\s\"'=]")

_RESET: Final = "\x1b[0m"
_LEVEL_STYLES: Final = {
    "TRACE": "\x1b[1;36m",
    "DEBUG": "\x1b[1;34m",
    "INFO": "\x1b[1m",
    "SUCCESS": "\x1b[1;32m",
    "WARNING": "\x1b[1;33m",
    "ERROR": "\x1b[1;31m",
    "CRITICAL": "\x1b[1;41m",
}
_TIME_STYLE: Final = "\x1b[32m"
_CONTEXT_STYLE: Final = "\x1b[36m"
_KEY_STYLE: Final = "\x1b[2m"

EX_NOINPUT: Final = 66
"""Exit status when FILE cannot be opened (sysexits.h)."""
EX_IOERR: Final = 74
"""Exit status when reading or writing fails after that (sysexits.h)."""


@attrs.frozen
class ViewOptions:
    """What to show and how."""

    rooms: frozenset[str] = frozenset()
    """Show only records whose ``room`` is one of these; empty shows every record."""
    min_level: int = 0
    """Show only records at least this severe (a value from `LEVELS`).

    Records whose level is not a known name are always shown."""
    color: bool = False
    """Mark up the output with ANSI colours."""


def parse_level(name: str) -> int:
    """The severity of a level name such as ``warning`` (any case; ``warn`` too).

    Raises:
        argparse.ArgumentTypeError: not a level name (so it can be an argparse
            ``type=``).
    """
    canonical = _canonical_level(name)
    if canonical is None:
        choices = ", ".join(name.lower() for name in LEVELS)
        raise argparse.ArgumentTypeError(f"unknown level {name!r} (choose from {choices})")
    return LEVELS[canonical]


def _canonical_level(name: str) -> str | None:
    upper = name.strip().upper()
    upper = _ALIASES.get(upper, upper)
    return upper if upper in LEVELS else None


def format_line(line: str, options: ViewOptions) -> str | None:
    """Render one log line for reading, or None when the filters hide it.

    *line* has no trailing newline. The result may span several lines when a
    message or an extra value (a traceback) does. Never raises on any input.
    """
    priority: int | None = None
    match = _PRIORITY_PREFIX.match(line)
    if match:
        priority = int(match.group(1))
        line = line[match.end() :]
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    return _format_record(record, priority, options)


def _format_record(
    record: dict[str, Any], priority: int | None, options: ViewOptions
) -> str | None:
    room = record.get("room")
    if options.rooms and (room is None or _text(room) not in options.rooms):
        return None

    level_value = record.get("level")
    if isinstance(level_value, str) and level_value:
        level = _canonical_level(level_value) or _clean(level_value.upper())
    elif priority is not None:
        level = _SEVERITY_LEVELS[priority & 7]
    else:
        level = "-"
    if options.min_level and level in LEVELS and LEVELS[level] < options.min_level:
        return None

    color = options.color
    parts = [_paint(_format_time(record.get("ts")), _TIME_STYLE, color)]
    parts.append(_paint(f"{level:<8}", _LEVEL_STYLES.get(level, ""), color))
    context = [_text(record[f]) for f in _CONTEXT_FIELDS if record.get(f) is not None]
    if context:
        parts.append(_paint(f"[{' '.join(context)}]", _CONTEXT_STYLE, color))

    msg = record.get("msg")
    msg_lines = _text(msg).split("\n") if msg is not None else [""]
    parts.append(msg_lines[0])
    head = " ".join(parts)

    pairs = []
    blocks: list[str] = ["    " + rest for rest in msg_lines[1:]]
    for key, value in record.items():
        if key in _KNOWN_FIELDS:
            continue
        key_text = _paint(f"{_clean(key)}=", _KEY_STYLE, color)
        if isinstance(value, str) and "\n" in value:
            blocks.append("    " + _paint(f"{_clean(key)}:", _KEY_STYLE, color))
            blocks.extend("    " + _clean(text) for text in value.rstrip("\n").split("\n"))
        else:
            pairs.append(key_text + _format_value(value))
    if pairs:
        head += "  " + " ".join(pairs)
    return "\n".join([head, *blocks])


def _format_time(ts: object) -> str:
    when: datetime | None = None
    if isinstance(ts, str):
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            return _clean(ts)
    elif isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            when = datetime.fromtimestamp(ts, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return str(ts)
    if when is None:
        return "--:--:--.---"
    return f"{when:%H:%M:%S}.{when.microsecond // 1000:03d}"


def _text(value: object) -> str:
    """A field as text: strings as they are (control characters escaped), others as JSON."""
    if isinstance(value, str):
        return "\n".join(_clean(part) for part in value.split("\n"))
    return _json(value)


def _format_value(value: object) -> str:
    if isinstance(value, str) and value and not _NEEDS_QUOTES.search(value):
        return _clean(value)
    return _json(value)


def _json(value: object) -> str:
    # json.dumps escapes C0 controls (as \u001b) but not C1 ones such as the
    # 8-bit CSI \x9b, hence the _clean.
    return _clean(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _clean(text: str) -> str:
    """Escape control characters (bar tab) as \\xNN so they cannot drive a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _paint(text: str, style: str, color: bool) -> str:
    return f"{style}{text}{_RESET}" if color and style else text


def follow_lines(
    path: str | os.PathLike[str],
    *,
    poll_interval: float = 0.25,
    sleep: Callable[[float], object] = time.sleep,
) -> Generator[bytes, None, None]:
    """Yield the lines of the file at *path*, then the lines appended to it, forever.

    Like ``tail -F`` from the top of the file. Lines come without their newline;
    a partly written last line is held back until its newline arrives. At the
    end of the file it polls every *poll_interval* seconds (through *sleep*)
    and notices:

    * **truncation** (``copytruncate`` rotation: the file got shorter than what
      was read) and reads again from the top;
    * **replacement** (rename rotation: *path* is now another file) and reads
      what is left of the old file, then the new file from the top;
    * *path* missing for a while (between a rename and the new file): it waits.

    A file truncated and then refilled past the read position between two
    polls is not noticed; that is the limit of polling.

    Raises:
        OSError: *path* cannot be opened at the start.
    """
    file = open(path, "rb")  # noqa: SIM115 -- closed in the finally below
    try:
        partial = b""
        while True:
            chunk = file.read(65536)
            if chunk:
                *lines, partial = (partial + chunk).split(b"\n")
                yield from lines
                continue
            current = _stat_or_none(path)
            if current is not None and not _same_file(current, os.fstat(file.fileno())):
                *lines, last = (partial + file.read()).split(b"\n")
                yield from lines
                if last:
                    yield last
                partial = b""
                try:
                    replacement = open(path, "rb")  # noqa: SIM115 -- closed in finally
                except FileNotFoundError:
                    sleep(poll_interval)
                    continue
                file.close()
                file = replacement
                continue
            if os.fstat(file.fileno()).st_size < file.tell():
                if partial:
                    yield partial
                    partial = b""
                file.seek(0)
                continue
            sleep(poll_interval)
    finally:
        file.close()


def _stat_or_none(path: str | os.PathLike[str]) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``meksd logs`` options to *parser* (dests: rooms, level, follow, color, file)."""
    parser.add_argument(
        "file",
        nargs="?",
        default=None,
        metavar="FILE",
        help="log file of JSON lines (default, or '-': standard input)",
    )
    parser.add_argument(
        "--room",
        dest="rooms",
        action="append",
        default=[],
        metavar="ROOM",
        help="show only records of this room (repeat for several rooms)",
    )
    parser.add_argument(
        "--level",
        type=parse_level,
        default=0,
        metavar="LEVEL",
        help="show only records at least this severe: "
        + ", ".join(name.lower() for name in LEVELS),
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep reading FILE as it grows, across truncation and rotation "
        "(standard input is always read to its end)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output (auto: when stdout is a terminal and NO_COLOR is unset)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the log lines selected by parsed *args* to stdout; return the exit status.

    0 when the input ended (or stdout was closed by the reader, as by ``head``),
    66 (``EX_NOINPUT``) when FILE cannot be opened, 74 (``EX_IOERR``) when
    reading or writing fails later, 130 on Ctrl-C. Errors are reported on stderr.
    """
    stdout = sys.stdout
    options = ViewOptions(
        rooms=frozenset(args.rooms),
        min_level=args.level,
        color=_use_color(args.color, stdout, os.environ),
    )
    from_stdin = args.file in (None, "-")
    source: AbstractContextManager[Iterable[bytes]]
    try:
        if from_stdin:
            source = nullcontext(sys.stdin.buffer)
        elif args.follow:
            with open(args.file, "rb"):
                pass  # report a missing file now, not after the first poll
            source = closing(follow_lines(args.file))
        else:
            source = open(args.file, "rb")  # noqa: SIM115 -- entered below
    except OSError as exc:
        print(f"meksd logs: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EX_NOINPUT
    # Reading a pipe or following a file is watching live: show each line at once.
    flush = from_stdin or args.follow
    try:
        with source as raw_lines:
            for raw in raw_lines:
                text = format_line(raw.decode("utf-8", "replace").rstrip("\r\n"), options)
                if text is not None:
                    stdout.write(text + "\n")
                    if flush:
                        stdout.flush()
            stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # e.g. a rotated file we may not read
        print(f"meksd logs: {exc}", file=sys.stderr)
        return EX_IOERR
    return 0


def _use_color(choice: str, stream: IO[str], environ: Mapping[str, str]) -> bool:
    if choice != "auto":
        return choice == "always"
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def _silence_stdout() -> None:
    # The reader went away (`meksd logs | head`). Point stdout at /dev/null so
    # that the interpreter's final flush does not fail again on exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``meksd logs`` on its own: parse *argv* (default ``sys.argv[1:]``) and `run`."""
    parser = argparse.ArgumentParser(
        prog="meksd logs",
        description="Read meksd's JSON log lines (from FILE or stdin) readably.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
