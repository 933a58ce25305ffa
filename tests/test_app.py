"""The running app over real sockets: protocol replies, lag, resume, reload, shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from meksd.config import Config, parse_config
from meksd.core.wire import snapshot_message
from meksd.model.events import ChatMessage, User
from meksd.runtime.actor import Probe
from meksd.runtime.app import App
from tests.support import DashClient, open_dashboard

BASE = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_ms = {tick}
ring_size = {ring}
send_timeout_s = 2.0
heartbeat_s = 30.0
shutdown_grace_s = 2.0
"""

ROOM = """
[[rooms]]
id = "{id}"
chat_history = {chat}
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/{path}"
backoff_initial_s = 5.0
"""


def make_config(
    rooms: dict[str, int], *, tick: int = 16, ring: int = 1024, path: str = "never"
) -> Config:
    text = BASE.format(tick=tick, ring=ring)
    text += "".join(ROOM.format(id=room, chat=chat, path=path) for room, chat in rooms.items())
    return parse_config(text)


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[App]:
    running: App = await nursery.start(App(make_config({"a": 50, "b": 50})).run)
    yield running
    nursery.cancel_scope.cancel()


def url(app: App) -> str:
    return f"ws://127.0.0.1:{app.dashboards.port}/ws"


async def inject(app: App, room: str, n: int, *, start: int = 0, size: int = 0) -> None:
    """Feed ``n`` chat events straight into a room's actor; wait until published."""
    inbox = app.rooms[room]._inbox_send
    assert inbox is not None
    now = trio.current_time()
    for i in range(start, start + n):
        text = f"hi {i}".ljust(size, ".")
        await inbox.send(ChatMessage(f"m{i}", User(str(i % 5), f"u{i % 5}"), text, now, 0))
    probe = Probe()
    await inbox.send(probe)
    await probe.done.wait()
    while not app.rooms[room].actor_idle():  # the trailing edge publishes within a tick
        await trio.sleep(0.002)


async def recv(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def test_welcome_ping_errors_and_unknown_room(app: App) -> None:
    """Replies per protocol v1: welcome, pong with id, error codes for bad input; the connection stays."""
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            welcome = await recv(ws)
            assert welcome["type"] == "welcome" and welcome["rooms"] == ["a", "b"]
            await ws.send_message('{"type": "ping", "id": 7}')
            assert await recv(ws) == {"type": "pong", "id": 7}
            await ws.send_message("{not json")
            assert (await recv(ws))["code"] == "bad_json"
            await ws.send_message(b"\x00binary")
            assert (await recv(ws))["code"] == "bad_request"
            await ws.send_message('{"type": "subscribe", "room": "nope"}')
            assert (await recv(ws))["code"] == "unknown_room"
            await ws.send_message(
                '{"type": "subscribe", "room": "a", "since": {"epoch": "x", "seq": -1}}'
            )
            err = await recv(ws)
            assert err["code"] == "bad_request" and "since.seq" in err["message"]
            await ws.send_message('{"type": "teleport"}')
            assert (await recv(ws))["code"] == "unknown_type"
            await ws.send_message('{"type": "ping"}')
            assert await recv(ws) == {"type": "pong"}


async def test_wrong_path_is_rejected_with_404(app: App) -> None:
    """Only /ws is a dashboard endpoint."""
    from trio_websocket import ConnectionRejected

    statuses: list[int] = []
    with trio.fail_after(10):
        try:
            async with open_dashboard(f"ws://127.0.0.1:{app.dashboards.port}/other"):
                pass
        except* ConnectionRejected as group:
            statuses.extend(e.status_code for e in _leaves(group))  # type: ignore[attr-defined]
    assert statuses == [404]


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def test_resume_from_ring_sends_only_missed_deltas(app: App) -> None:
    """A dashboard resuming with a known {epoch, seq} gets the missed deltas, no snapshot."""
    client = DashClient(url(app))
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            client.ws = ws
            await client.subscribe("a")
            await inject(app, "a", 5)
            feed = app.rooms["a"].feed
            await client.read_until(lambda: client.views["a"].seq == feed.seq)
        before = client.views["a"].snapshots
        await inject(app, "a", 20, start=100)
        async with open_dashboard(url(app)) as ws:
            client.ws = ws
            await client.subscribe("a", resume=True)
            await client.read_until(lambda: client.views["a"].seq == feed.seq)
        assert client.views["a"].snapshots == before, "resumed without a snapshot"
        assert client.views["a"].state is not None
        assert len(client.views["a"].state["chat"]) == 25


async def test_resume_from_another_epoch_gets_a_snapshot(app: App) -> None:
    """An unknown epoch (e.g. after a reset) means a snapshot, never a silent gap."""
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            await recv(ws)
            await ws.send_message(
                '{"type": "subscribe", "room": "a", "since": {"epoch": "old", "seq": 3}}'
            )
            snap = await recv(ws)
            assert snap["type"] == "snapshot" and snap["epoch"] == app.rooms["a"].feed.epoch


async def test_dashboard_that_falls_off_the_ring_gets_lagged_then_snapshot(
    nursery: trio.Nursery,
) -> None:
    """A writer whose cursor fell off the ring sends lagged, then the current snapshot, then live deltas."""
    app: App = await nursery.start(App(make_config({"a": 50}, tick=1, ring=4)).run)
    client = DashClient(url(app))
    with trio.fail_after(20):
        async with open_dashboard(url(app), rcvbuf=4096) as ws:
            client.ws = ws
            await client.subscribe("a")
            await client.read_until(lambda: client.views["a"].snapshots == 1)
            feed = app.rooms["a"].feed
            (dash,) = app.dashboards.dashboards
            # The client reads nothing: publish big deltas until its socket is full and
            # it is no longer written live, then more than the ring holds.
            i = 0
            while not dash.conn.congested:
                await inject(app, "a", 1, start=i, size=20_000)
                i += 1
                assert i < 2000, "the socket never filled"
            congested_at = feed.seq
            while feed.seq < congested_at + 6:
                await inject(app, "a", 1, start=i, size=100)
                i += 1
            # Now it reads again: it is told it lagged, gets a snapshot, then goes on live.
            await client.read_until(lambda: client.views["a"].seq == feed.seq)
            await inject(app, "a", 2, start=i)
            await client.read_until(lambda: client.views["a"].seq == feed.seq)
            view = client.views["a"]
            assert view.lagged == 1
            assert view.snapshots == 2
            assert view.state is not None
            assert view.state == snapshot_message(feed.state, feed.seq)["state"]
            assert app.dashboards.totals.lagged["a"] == 1
    nursery.cancel_scope.cancel()


async def test_shutdown_closes_dashboards_with_1001(nursery: trio.Nursery) -> None:
    """App.stop closes every dashboard with 1001 and returns within the grace period."""
    app: App = await nursery.start(App(make_config({"a": 50})).run)
    closed: list[int | None] = []
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            await recv(ws)
            await ws.send_message('{"type": "subscribe", "room": "a"}')
            await recv(ws)
            await app.stop()
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.get_message()
            closed.append(info.value.reason.code if info.value.reason else None)
    assert closed == [1001]


async def test_reload_adds_removes_and_restarts_rooms_keeping_untouched_dashboards(
    app: App,
) -> None:
    """SIGHUP semantics: new rooms start, removed rooms tell their dashboards, changed rooms keep state and seq."""
    a_client, b_client = DashClient(url(app)), DashClient(url(app))
    with trio.fail_after(20):
        async with open_dashboard(url(app)) as wa, open_dashboard(url(app)) as wb:
            a_client.ws, b_client.ws = wa, wb
            await a_client.subscribe("a")
            await b_client.subscribe("b")
            await inject(app, "a", 3)
            feed_a = app.rooms["a"].feed
            await a_client.read_until(lambda: a_client.views["a"].seq == feed_a.seq)
            await b_client.read_until(lambda: b_client.views["b"].snapshots == 1)

            # a: its source changes (restart, state kept); b: removed; c: added.
            await app.reload(make_config({"a": 50, "c": 50}, path="elsewhere"))
            assert sorted(app.rooms) == ["a", "c"]
            assert app.hub.get("b") is None
            await b_client.read_until(
                lambda: any(m.get("code") == "room_closed" for m in b_client.others)
            )
            assert app.rooms["a"].feed is feed_a
            assert app.rooms["a"].state.chat[-1].msg_id == "m2", "state survived the restart"
            await inject(app, "a", 2, start=50)
            await a_client.read_until(lambda: a_client.views["a"].seq == feed_a.seq)
            assert a_client.views["a"].snapshots == 1, "no resync for an untouched dashboard"
            epoch = feed_a.epoch

            # a: a shorter chat history changes what a snapshot shows: new epoch, resync.
            await app.reload(make_config({"a": 2, "c": 50}, path="elsewhere"))
            await a_client.read_until(lambda: a_client.views["a"].snapshots == 2)
            view = a_client.views["a"]
            assert view.epoch == feed_a.epoch != epoch
            assert view.state is not None
            assert [c["msg_id"] for c in view.state["chat"]] == ["m50", "m51"]
            assert app.rooms["a"].state.events == 5, "counts carried into the new epoch"
            assert await app.healthy()


async def test_healthy_is_false_when_an_actor_is_wedged(
    app: App, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The watchdog's round trip fails when one room's actor stops taking its inbox."""
    import meksd.runtime.app as app_mod

    monkeypatch.setattr(app_mod, "PROBE_TIMEOUT_S", 0.5)
    assert await app.healthy()
    app.rooms["b"]._inbox_send = trio.open_memory_channel[Any](0)[0]  # nobody will ever receive
    assert not await app.healthy()


async def test_a_connection_closed_before_its_handshake_ends_at_once(app: App) -> None:
    """A TCP connect-and-close (a port probe) is counted as abandoned right away, not held until the handshake timeout."""
    with trio.fail_after(5):
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", app.dashboards.port)
            await stream.aclose()
        while app.dashboards.totals.refused["abandoned"] < 3:
            await trio.sleep(0.01)
    assert not app.dashboards._per_address


async def test_unknown_event_types_are_counted_in_bounded_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A feed inventing event type names cannot grow the room's counters without end."""
    from meksd.runtime.room import MAX_UNKNOWN_TYPES

    n = MAX_UNKNOWN_TYPES + 50
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(f'{{"event": "made_up_{i}", "data": {{}}}}\n' for i in range(n)))
    text = BASE.format(tick=16, ring=64) + (
        f'[[rooms]]\nid = "r"\n[[rooms.sources]]\nkind = "replay"\npath = "{feed}"\nspeed = 0.0\n'
    )
    app: App = await nursery.start(App(parse_config(text)).run)
    room = app.rooms["r"]
    with trio.fail_after(10):
        while sum(room.counters.unknown.values()) < n:
            await trio.sleep(0.01)
    assert len(room.counters.unknown) == MAX_UNKNOWN_TYPES + 1
    assert room.counters.unknown["_other"] == 50
    nursery.cancel_scope.cancel()
