"""``meksd simulate``: a synthetic live room served over WebSocket and http-poll.

::

    meksd simulate --port 9001 [--host 127.0.0.1] [--rate R] [--burst-rate B]
                   [--burst-every S] [--burst-s S] [--battles] [--seed N]
                   [--replay N] [--poll-ms MS] [--end-after S]

The feed is :class:`~meksd.runtime.sources.feedgen.FeedGenerator`'s (the same as the
built-in ``simulator`` source: chat, likes, joins, gifts and streaks, bursts,
battles, re-sent duplicates), appended every 10 ms to a
:class:`~meksd.runtime.feedserver.FeedLog` and served by a
:class:`~meksd.runtime.feedserver.FeedServer` on one port:

- ``ws://HOST:PORT/feed``: for a ``websocket`` source; each connection first gets
  the last ``--replay`` events (as relays replay recent history on connect);
- ``http://HOST:PORT/poll?cursor=N``: for an ``http-poll`` source.

So anyone can demo meksd, try failover between the two, and load-test without a
real stream. ``--end-after S`` sends ``streamEnd`` after S seconds and stops the
feed (the room shows ``ended``; its sources then back off). The first line on
standard output names both URLs (with the real port when ``--port 0``). SIGINT and
SIGTERM stop it; it exits 0.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time

import orjson
import trio

from meksd.config import SimulatorSourceConfig
from meksd.errors import UsageError
from meksd.runtime.feedserver import FeedLog, FeedServer
from meksd.runtime.sources.feedgen import FeedGenerator

__all__ = ["add_arguments", "run", "simulate"]

TICK_S = 0.01


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``meksd simulate`` options."""
    defaults = SimulatorSourceConfig(kind="simulator")
    parser.add_argument("--port", type=_port, required=True, help="TCP port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--rate", type=_non_negative, default=defaults.rate, help="steady events per second"
    )
    parser.add_argument(
        "--burst-rate",
        type=_non_negative,
        default=defaults.burst_rate,
        metavar="B",
        help="events per second during bursts",
    )
    parser.add_argument(
        "--burst-every",
        type=_positive,
        default=defaults.burst_every_s,
        metavar="S",
        help="burst period in seconds",
    )
    parser.add_argument(
        "--burst-s",
        type=_non_negative,
        default=defaults.burst_s,
        metavar="S",
        help="burst length in seconds (0: no bursts)",
    )
    parser.add_argument("--battles", action="store_true", help="stage battles (PK)")
    parser.add_argument("--seed", type=int, default=None, help="seed for a reproducible feed")
    parser.add_argument(
        "--replay",
        type=_count,
        default=50,
        metavar="N",
        help="events sent first to each WebSocket connection (default 50)",
    )
    parser.add_argument(
        "--poll-ms",
        type=_count,
        default=500,
        metavar="MS",
        help="interval polls are told to keep (default 500)",
    )
    parser.add_argument(
        "--end-after",
        type=_positive,
        default=None,
        metavar="S",
        help="send streamEnd after S seconds and stop the feed",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``meksd simulate`` command; returns the exit status."""
    if args.burst_s > args.burst_every:
        raise UsageError(f"--burst-s {args.burst_s:g} must be <= --burst-every")
    config = SimulatorSourceConfig(
        kind="simulator",
        rate=args.rate,
        burst_rate=args.burst_rate,
        burst_every_s=args.burst_every,
        burst_s=args.burst_s,
        battles=args.battles,
        seed=args.seed,
    )
    server = FeedServer(
        FeedLog(), host=args.host, port=args.port, poll_ms=args.poll_ms, replay=args.replay
    )
    try:
        trio.run(simulate, config, server, args.end_after)
    except BaseExceptionGroup as group:  # the listener's error, wrapped by the nurseries
        failed, _ = group.split(OSError)
        if failed is None:
            raise
        exc: BaseException = failed
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {detail}") from None
    return 0


async def simulate(
    config: SimulatorSourceConfig,
    server: FeedServer,
    end_after: float | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Generate the feed into ``server.log`` and serve it until SIGINT or SIGTERM;
    reports started with the bound port."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            host = f"[{server.host}]" if ":" in server.host else server.host
            print(
                f"simulating a feed on ws://{host}:{port}/feed and http://{host}:{port}/poll",
                flush=True,
            )
            nursery.start_soon(_generate, config, server.log, end_after)
            task_status.started(port)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    print("simulator stopped", file=sys.stderr, flush=True)


async def _generate(config: SimulatorSourceConfig, log: FeedLog, end_after: float | None) -> None:
    generator = FeedGenerator(config, wall_ms_at_zero=int(time.time() * 1000))
    start = trio.current_time()
    tick = 0
    while True:
        elapsed = trio.current_time() - start
        if end_after is not None and elapsed >= end_after:
            log.append(orjson.dumps({"event": "streamEnd", "data": {}}))
            return
        for envelope in generator.next_batch(elapsed):
            log.append(orjson.dumps(envelope))
        tick = max(tick + 1, math.floor(elapsed / TICK_S) + 1)
        await trio.sleep_until(start + tick * TICK_S)
