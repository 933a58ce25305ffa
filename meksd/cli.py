"""The ``meksd`` command line: argument parsing, and the only place that maps errors
to exit codes.

```
meksd run [--config FILE] [--log-level LEVEL]    serve (embedded default config without --config)
meksd check-config FILE                          validate a config file
meksd replay FILE.jsonl [--room ID] [--json] [--streak-timeout S] [--top N]
meksd logs [FILE] [--room ROOM] [--level LEVEL] [-f]
meksd simulate --port P [--host H] [--rate R ...]  serve a synthetic feed (meksd.simulate)
meksd state list|export|import|reset ...         the store of room states (meksd.statecli)
meksd token new [--role ROLE] [--rooms ID,ID]    a dashboard token and its [[auth.tokens]] lines
meksd token hash < TOKEN                         the SHA-256 of a token (meksd.tokencmd)
meksd --version
```

Exit codes (sysexits.h): 0 success; 64 ``EX_USAGE`` bad command line; 66
``EX_NOINPUT`` an input file cannot be read; 65 ``EX_DATAERR`` an input file is
invalid; 74 ``EX_IOERR`` the state store cannot be used; 75 ``EX_TEMPFAIL`` another
meksd holds the state store; 78 ``EX_CONFIG`` invalid configuration; 130 interrupted
by Ctrl-C before meksd took over signals. ``meksd run`` handles SIGINT and SIGTERM
itself, shuts down gracefully and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import NoReturn

import orjson

from meksd import __version__
from meksd.config import LOG_LEVELS, default_config, load_config
from meksd.errors import (
    ConfigError,
    DataError,
    InputError,
    MeksdError,
    StoreBusyError,
    StoreError,
    UsageError,
)

__all__ = ["EX_CONFIG", "EX_NOINPUT", "EX_USAGE", "main"]

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises ``UsageError`` instead of exiting with 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    """The ``meksd`` argument parser (each subcommand sets ``handler``)."""
    parser = _Parser(
        prog="meksd",
        description="Live-stream event broker: room feeds in, leaderboards and battles out "
        "to dashboards over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"meksd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="serve rooms to dashboards")
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration (default: the embedded demo room fed by the simulator)",
    )
    run.add_argument("--log-level", type=_log_level, metavar="LEVEL", help="override [log] level")
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=_cmd_check_config)

    replay = commands.add_parser(
        "replay",
        help="run a JSONL feed through normalize and reduce; print the leaderboard",
        description="Replay a JSONL feed through meksd's core, without timing, and print "
        "what a room would show: leaderboard, totals, pending streaks, rejections.",
    )
    replay.add_argument("file", metavar="FILE.jsonl")
    replay.add_argument("--room", default="replay", metavar="ID", help="room id to report")
    replay.add_argument("--json", action="store_true", help="print JSON instead of a table")
    replay.add_argument(
        "--streak-timeout",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="close streaks without an end event after S seconds of feed time (default 15)",
    )
    replay.add_argument(
        "--top", type=int, default=20, metavar="N", help="leaderboard rows to print (0: all)"
    )
    replay.set_defaults(handler=_cmd_replay)

    logs = commands.add_parser("logs", help="read meksd's JSON log lines as text")
    from meksd import logview

    logview.add_arguments(logs)
    logs.set_defaults(handler=logview.run)

    sim = commands.add_parser(
        "simulate",
        help="serve a synthetic feed over WebSocket (/feed) and http-poll (/poll)",
        description="Serve a simulated live room for meksd's websocket and http-poll "
        "sources, on one port. See docs/sources.md.",
    )
    from meksd import simulate

    simulate.add_arguments(sim)

    state = commands.add_parser(
        "state",
        help="list, export, import or reset the stored room states",
        description="Work on the store of room states (stop the daemon before import "
        "or reset). See docs/storage.md.",
    )
    from meksd import statecli

    statecli.add_arguments(state)

    token = commands.add_parser("token", help="create dashboard tokens ([auth] stores hashes)")
    from meksd import tokencmd

    tokencmd.add_arguments(token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_usage(sys.stderr)
            raise UsageError("a command is required (run, check-config, replay, logs, state)")
        return handler(args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except ConfigError as exc:
        for message in exc.messages:
            print(f"meksd: config error: {message}", file=sys.stderr)
        return EX_CONFIG
    except UsageError as exc:
        print(f"meksd: error: {exc}", file=sys.stderr)
        return EX_USAGE
    except InputError as exc:
        print(f"meksd: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except DataError as exc:
        print(f"meksd: {exc}", file=sys.stderr)
        return EX_DATAERR
    except StoreError as exc:
        print(f"meksd: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if isinstance(exc, StoreBusyError) else EX_IOERR
    except MeksdError as exc:  # pragma: no cover - every subclass is mapped above
        print(f"meksd: {exc}", file=sys.stderr)
        return 1


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from meksd.logsetup import configure_logging

    config = load_config(args.config) if args.config else default_config()
    configure_logging(args.log_level or config.log.level)
    from meksd.runtime.app import serve

    try:
        trio.run(partial(serve, config, config_path=args.config, log_level=args.log_level))
    except BaseExceptionGroup as group:
        # A store held by another meksd stops the start; the nurseries wrap it.
        busy, _ = group.split(StoreBusyError)
        if busy is None:
            raise
        raise _leaves(busy)[0] from None
    return 0


def _leaves(group: BaseExceptionGroup[StoreBusyError]) -> list[StoreBusyError]:
    out: list[StoreBusyError] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    sources = sum(len(room.sources) for room in config.rooms)
    print(f"OK: {args.file}: {len(config.rooms)} room(s), {sources} source(s)")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from meksd.config import RoomSettings, room_config
    from meksd.playground import format_report, replay_lines, report_to_json

    try:
        with open(args.file, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise InputError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    settings = RoomSettings(id=args.room, streak_timeout_s=args.streak_timeout)
    report = replay_lines(
        data.split(b"\n"),
        room_id=args.room,
        config=room_config(settings),
        max_record_bytes=settings.max_record_bytes,
    )
    if args.json:
        text = orjson.dumps(report_to_json(report), option=orjson.OPT_INDENT_2).decode()
    else:
        text = format_report(report, top=args.top)
    print(text)
    return 0
