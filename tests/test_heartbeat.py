"""Dashboard heartbeats over real sockets: pings every heartbeat_s, and a connection
that stops answering them is dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from meksd.config import parse_config
from meksd.runtime.app import App
from tests.rawws import RawClient, RawClosed, open_raw

HEARTBEAT_S = 2.0

CONFIG = f"""
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
heartbeat_s = {HEARTBEAT_S}
shutdown_grace_s = 1.0

[storage]
enabled = false

[[rooms]]
id = "r1"
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/never"
backoff_initial_s = 5.0
"""


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[App]:
    running: App = await nursery.start(App(parse_config(CONFIG)).run)
    yield running
    nursery.cancel_scope.cancel()


async def read_until_closed(raw: RawClient, closed: list[tuple[float, int | None]]) -> None:
    """Take frames (pings are noted, and answered unless told not to) until the end."""
    try:
        while True:
            await raw.recv_frame()
    except RawClosed as exc:
        closed.append((trio.current_time(), exc.code))


async def test_a_dashboard_is_pinged_every_heartbeat_s_and_stays_while_it_answers(
    app: App, autojump_clock: trio.testing.MockClock
) -> None:
    """Pings every heartbeat_s from the connection's start; answered, nothing closes."""
    port = app.dashboards.port
    closed: list[tuple[float, int | None]] = []
    with trio.fail_after(30):
        async with open_raw(port) as raw, trio.open_nursery() as nursery:
            assert await raw.handshake(port) == 101
            at = trio.current_time()
            nursery.start_soon(read_until_closed, raw, closed)
            await trio.sleep(5 * HEARTBEAT_S + 0.5)
            nursery.cancel_scope.cancel()
    assert closed == []
    assert raw.pings == pytest.approx([at + i * HEARTBEAT_S for i in range(1, 6)], abs=0.01)


async def test_a_dashboard_that_stops_answering_pings_is_dropped(
    app: App, autojump_clock: trio.testing.MockClock
) -> None:
    """No pong for two intervals: the connection is dropped (reset, no close frame) at
    the first heartbeat after that, and counted; a dashboard that answers stays."""
    port = app.dashboards.port
    closed: list[tuple[float, int | None]] = []
    with trio.fail_after(30):
        async with open_raw(port) as mute, open_raw(port) as fine, trio.open_nursery() as nursery:
            mute.answer_pings = False
            assert await mute.handshake(port) == 101
            at = trio.current_time()
            assert await fine.handshake(port) == 101
            nursery.start_soon(read_until_closed, mute, closed)
            nursery.start_soon(read_until_closed, fine, closed)
            await trio.sleep(4 * HEARTBEAT_S)
            assert len(closed) == 1, "only the mute one"
            nursery.cancel_scope.cancel()
    ((when, code),) = closed
    assert code is None, "dropped without a close frame"
    assert when == pytest.approx(at + 3 * HEARTBEAT_S, abs=0.01)
    assert len(mute.pings) == 2
    assert app.dashboards.totals.killed == 1
