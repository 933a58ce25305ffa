"""The http-poll source against scripted HTTP feeds on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import attrs
import orjson
import pytest
import trio
import trio.testing

from meksd.config import HttpPollSourceConfig
from meksd.model.raw import RawRecord
from meksd.runtime.feedserver import HttpRequest, HttpResponse, serve_http
from meksd.runtime.sources import HttpPollSource, make_source
from meksd.runtime.sources.base import Pacing
from meksd.runtime.sources.http_poll import Page, parse_page, parse_retry_after
from tests.support import drain_nowait

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class UpperBound:
    """A 'random' source that always draws the top of the range: delays are the bounds."""

    def uniform(self, a: float, b: float, /) -> float:
        return b


@attrs.define
class Seen:
    """What the fake feed saw: when, which cursor, on which TCP connection."""

    at: float
    cursor: str | None
    connection: int
    query: dict[str, str]


def page(events: list[object], cursor: object = None, poll_ms: object = None) -> HttpResponse:
    body: dict[str, object] = {"events": events}
    if cursor is not None:
        body["cursor"] = cursor
    if poll_ms is not None:
        body["poll_ms"] = poll_ms
    return HttpResponse(200, orjson.dumps(body))


def chat(i: int) -> dict[str, object]:
    return {"event": "chat", "data": {"msgId": f"m{i}", "userId": 1, "comment": f"c{i}"}}


@asynccontextmanager
async def feed(
    script: Callable[[int, HttpRequest], Awaitable[HttpResponse]],
) -> AsyncIterator[tuple[int, list[Seen]]]:
    """A poll feed answering the n-th request (from 0) with ``script(n, request)``.

    It never closes idle connections: httpx expires keep-alive connections by the
    real clock, while these tests run on trio's autojump clock.
    """
    seen: list[Seen] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(
            Seen(
                trio.current_time(),
                request.query.get("cursor"),
                request.connection,
                dict(request.query),
            )
        )
        return await script(len(seen) - 1, request)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_http, handler, "127.0.0.1", 0, idle_timeout_s=math.inf)
        )
        yield port, seen
        nursery.cancel_scope.cancel()


def config(port: int, **kwargs: object) -> HttpPollSourceConfig:
    return HttpPollSourceConfig(
        kind="http-poll",
        url=f"http://127.0.0.1:{port}/poll",
        **kwargs,  # type: ignore[arg-type]
    )


async def run_until(
    source: HttpPollSource, done: Callable[[], bool], *, limit: float = 600, every: float = 0.01
) -> list[RawRecord]:
    """Run ``source`` into an unbounded channel until ``done()``; return its records."""
    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, send)
        with trio.fail_after(limit):
            while not done():
                await trio.sleep(every)
        nursery.cancel_scope.cancel()
    return drain_nowait(receive)


async def test_pages_become_records_in_order_with_cursor_pacing_and_keepalive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each event is one record, in order; the cursor goes back; poll_ms paces; one connection."""
    pages = [
        page([chat(1), chat(2)], cursor="c1", poll_ms=250),
        page([chat(3)], cursor=7, poll_ms=5),  # an int cursor; poll_ms below the floor
        page([]),  # no cursor: keep "7"; no poll_ms: the config's
        page([], poll_ms=10**9),  # above the ceiling
    ]

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        return pages[n] if n < len(pages) else page([])

    async with feed(script) as (port, seen):
        cfg = attrs.evolve(
            config(port), url=f"http://127.0.0.1:{port}/poll?room=alice", max_poll_ms=4000
        )
        source = HttpPollSource(cfg, name="http-poll:0")
        records = await run_until(source, lambda: len(seen) >= 6)
    assert [orjson.loads(r.payload) for r in records] == [chat(1), chat(2), chat(3)]
    assert all(r.source == "http-poll:0" for r in records)
    assert [s.cursor for s in seen[:5]] == [None, "c1", "7", "7", "7"]
    assert all(s.query["room"] == "alice" for s in seen)
    gaps = [round(b.at - a.at, 2) for a, b in itertools.pairwise(seen)]
    assert gaps[:4] == [0.25, 0.1, 1.0, 4.0]
    assert {s.connection for s in seen} == {1}  # keep-alive: one TCP connection
    stats = source.statistics()
    assert (stats.records, stats.connects, stats.failures, stats.state) == (3, 1, 0, "connected")
    assert source.cursor == "7"


async def test_429_with_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 with Retry-After waits that long before the next poll (more than the backoff)."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        if n == 0:
            return HttpResponse(429, b"slow down", "text/plain", (("retry-after", "7"),))
        return page([chat(n)], cursor=str(n))

    async with feed(script) as (port, seen):
        source = HttpPollSource(config(port), rng=UpperBound())
        records = await run_until(source, lambda: len(seen) >= 2)
    assert seen[1].at - seen[0].at == pytest.approx(7.0, abs=0.05)
    assert len(records) >= 1
    stats = source.statistics()
    assert (stats.failures, stats.last_error) == (1, "HTTP 429")


async def test_retry_after_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    """A Retry-After longer than retry_after_max_s is cut to it."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        if n == 0:
            return HttpResponse(503, b"", "text/plain", (("retry-after", "86400"),))
        return page([])

    async with feed(script) as (port, seen):
        source = HttpPollSource(config(port, retry_after_max_s=30.0), rng=UpperBound())
        await run_until(source, lambda: len(seen) >= 2)
    assert seen[1].at - seen[0].at == pytest.approx(30.0, abs=0.05)


async def test_5xx_backs_off_with_growing_delays_then_a_good_answer_resets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """500s back off exponentially (full jitter's upper bound here); success resets it."""
    script_codes = [500, 500, 500, 500, 200, 500, 200]

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        code = script_codes[n] if n < len(script_codes) else 200
        return page([chat(n)], cursor=str(n)) if code == 200 else HttpResponse(code, b"oops")

    async with feed(script) as (port, seen):
        source = HttpPollSource(
            config(port, backoff_initial_s=0.5, backoff_max_s=3.0, poll_ms=1000),
            rng=UpperBound(),
        )
        await run_until(source, lambda: len(seen) >= 7)
    gaps = [round(b.at - a.at, 2) for a, b in itertools.pairwise(seen)]
    assert gaps[:6] == [0.5, 1.0, 2.0, 3.0, 1.0, 0.5]
    stats = source.statistics()
    assert stats.failures == 5
    assert stats.connects == 2  # connected, failed, connected again
    assert stats.last_error == "HTTP 500"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b"[1, 2]", "expected object @ $, got array"),
        (b'{"cursor": "x"}', "missing events @ $.events"),
        (b'{"events": "x"}', "expected array @ $.events, got str"),
        (b'{"events": [], "cursor": true}', "expected string or int @ $.cursor, got bool"),
        (b'{"events": [], "cursor": ""}', "cursor must be 1..1024 characters @ $.cursor"),
        (b'{"events": [], "poll_ms": -5}', "expected int >= 0 @ $.poll_ms, got -5"),
        (b'{"events": [], "poll_ms": 1.5}', "expected int >= 0 @ $.poll_ms, got float"),
    ],
)
def test_garbage_pages_say_what_is_wrong_and_where(body: bytes, reason: str) -> None:
    """parse_page never raises; it names the problem and its place."""
    result = parse_page(body)
    assert isinstance(result, str)
    assert result.startswith(reason)


def test_a_good_page_reencodes_each_event() -> None:
    """Every element of events is one record, re-encoded; non-objects pass (the normalizer
    rejects them)."""
    result = parse_page(b'{"events": [{"event": "chat"}, 5, "x"], "cursor": 12, "poll_ms": 0}')
    assert result == Page((b'{"event":"chat"}', b"5", b'"x"'), "12", 0)


def test_retry_after_forms() -> None:
    """Retry-After is delay-seconds or an HTTP date; anything else is ignored."""
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 15 Nov 2023 00:13:20 GMT", now) == pytest.approx(7200.0)
    assert parse_retry_after("Tue, 14 Nov 2023 20:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_a_garbage_answer_is_a_failure_and_the_cursor_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bad page is a failed poll (reason logged and kept); its cursor is not taken."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        if n == 0:
            return page([chat(0)], cursor="a")
        if n == 1:
            return HttpResponse(200, b'{"events": {"not": "a list"}, "cursor": "zzz"}')
        return page([chat(n)], cursor="b")

    async with feed(script) as (port, seen):
        source = HttpPollSource(config(port, poll_ms=100), rng=UpperBound())
        records = await run_until(source, lambda: len(seen) >= 3)
    assert [s.cursor for s in seen[:3]] == [None, "a", "a"]
    assert len(records) == 2
    stats = source.statistics()
    assert stats.failures == 1
    assert stats.last_error == "bad response: expected array @ $.events, got object"


async def test_a_hanging_feed_times_out_and_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request that gets no answer fails after timeout_s; the next poll goes on."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        if n == 0:
            await trio.sleep_forever()
        return page([chat(n)], cursor=str(n))

    async with feed(script) as (port, seen):
        source = HttpPollSource(config(port, timeout_s=2.0), rng=UpperBound())
        records = await run_until(source, lambda: len(seen) >= 2 and source.cursor == "1")
    assert seen[1].at - seen[0].at == pytest.approx(2.5, abs=0.05)  # timeout, then 0.5 backoff
    assert seen[1].connection != seen[0].connection  # the stuck connection was dropped
    assert len(records) == 1
    assert source.statistics().last_error == "no response within 2s"


async def test_an_oversized_answer_is_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    """A body over max_response_bytes fails the poll without keeping it."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        return page([chat(i) for i in range(50)], cursor="x")

    async with feed(script) as (port, _seen):
        source = HttpPollSource(config(port, max_response_bytes=1000), rng=UpperBound())
        records = await run_until(source, lambda: source.statistics().failures >= 2)
    assert records == []
    assert source.statistics().last_error == "response larger than 1000 bytes"
    assert source.cursor is None


async def test_a_refused_connection_is_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    """Nothing listening: 'cannot connect', with backoff."""
    with trio.socket.socket() as sock:  # a port that was free a moment ago
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = HttpPollSource(config(port), rng=UpperBound())
    await run_until(source, lambda: source.statistics().failures >= 3)
    stats = source.statistics()
    assert stats.state in ("backoff", "connecting")
    assert stats.last_error is not None and stats.last_error.startswith("cannot connect")


async def test_an_ended_room_polls_slowly(autojump_clock: trio.testing.MockClock) -> None:
    """With the room's stream ended, polls come ended_backoff_s/2..ended_backoff_s apart."""

    async def script(n: int, request: HttpRequest) -> HttpResponse:
        return page([], poll_ms=0)

    async with feed(script) as (port, seen):
        pacing = Pacing(ended=lambda: True, ended_backoff_s=60.0)
        source = make_source(config(port), room_id="r", index=0, pacing=pacing)
        assert isinstance(source, HttpPollSource)
        source._rng = UpperBound()
        await run_until(source, lambda: trio.current_time() > 600, limit=700, every=5)
    assert 9 <= len(seen) <= 11  # one poll a minute, not ten a second
