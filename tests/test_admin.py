"""The admin HTTP server, in process, over real sockets: health, readiness, metrics, API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

import meksd.runtime.admin as admin_module
from meksd.config import parse_config
from meksd.runtime.admin import AdminServer
from meksd.runtime.app import App
from meksd.runtime.health import room_readiness
from meksd.runtime.stats import RoomCounters


def env(event: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"event": event, "data": data})


USER1 = {"userId": 1, "uniqueId": "ann", "nickname": "Ann"}
USER2 = {"userId": "2", "uniqueId": "bo", "nickname": "Bo"}
GIFT1 = env(
    "gift",
    {**USER1, "msgId": "g1", "giftId": 5655, "giftType": 0, "repeatCount": 2, "diamondCount": 5},
)
REPLAY_LINES = [
    GIFT1,
    env(
        "gift",
        {
            **USER2,
            "msgId": "g2",
            "giftId": 5655,
            "giftType": 0,
            "repeatCount": 1,
            "diamondCount": 1,
        },
    ),
    env("chat", {**USER2, "msgId": "c1", "comment": "hello"}),
    env("like", {**USER1, "msgId": "l1", "likeCount": 3}),
    b"this is not json",  # rejected: not_json
    GIFT1,  # re-sent msgId: a duplicate
    env("questionNew", {"msgId": "q1"}),  # unknown event type
    env("gift", {**USER1, "msgId": "g3", "giftId": 1, "diamondCount": "lots"}),  # wrong_type
]

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
heartbeat_s = 30.0
shutdown_grace_s = 2.0

[[rooms]]
id = "replay"

[[rooms.sources]]
kind = "replay"
path = "{path}"
speed = 0

[[rooms]]
id = "silent"

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.05
"""


@attrs.define
class Setup:
    app: App
    admin: AdminServer
    client: httpx.AsyncClient
    feed: trio.MemorySendChannel[bytes]
    """Messages sent here go to the silent room's source, when the test chooses."""

    async def replay_done(self) -> None:
        """Wait until the replay room has taken, applied and published every line."""
        room = self.app.rooms["replay"]
        await poll_until(
            lambda: (
                room.sources[0].statistics().state == "finished"
                and room.counters.records == len(REPLAY_LINES)
                and room.actor_idle()
            )
        )


async def poll_until(done: Callable[[], bool], *, interval: float = 0.01) -> None:
    """Check ``done()`` every ``interval`` until it is true (the caller bounds the time)."""
    while True:
        if done():
            return
        await trio.sleep(interval)


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Setup]:
    """An App with a replay room and a silent websocket room, and its AdminServer."""
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"\n".join(REPLAY_LINES) + b"\n")
    feed_send, feed_receive = trio.open_memory_channel[bytes](10)

    async def feed_handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async for message in feed_receive:  # silent until the test sends
            await ws.send_message(message.decode())

    async with trio.open_nursery() as nursery:
        feed_server = await nursery.start(serve_websocket, feed_handler, "127.0.0.1", 0, None)
        config = parse_config(CONFIG.format(path=path, port=feed_server.port))
        app = App(config)
        await nursery.start(app.run)
        admin = AdminServer(app, listen=config.server.http_listen)
        await nursery.start(admin.run)
        async with httpx.AsyncClient(base_url=admin.url) as client:
            yield Setup(app, admin, client, feed_send)
        nursery.cancel_scope.cancel()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def test_healthz_and_json_errors(tmp_path: Path) -> None:
    """/healthz is 200 ok; unknown paths, wrong methods and unknown rooms are JSON errors."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            assert s.admin.port != 0
            r = await s.client.get("/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            assert r.headers["content-type"] == "application/json"

            r = await s.client.get("/no/such/path")
            assert r.status_code == 404
            assert r.json()["error"] == "not_found"

            r = await s.client.post("/healthz")
            assert r.status_code == 405
            assert r.json()["error"] == "method_not_allowed"

            r = await s.client.get("/api/rooms/nope")
            assert r.status_code == 404
            assert r.json()["error"] == "unknown_room"


async def test_readyz_follows_the_silent_feed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz is 503 while a feed delivers nothing, 200 once it delivers or its stream ended."""

    async def readyz(s: Setup) -> tuple[int, dict[str, dict[str, Any]]]:
        r = await s.client.get("/readyz")
        return r.status_code, {room["room"]: room for room in r.json()["rooms"]}

    async def readyz_until(
        s: Setup, done: Callable[[int, dict[str, dict[str, Any]]], bool]
    ) -> tuple[int, dict[str, dict[str, Any]]]:
        while True:
            status, rooms = await readyz(s)
            if done(status, rooms):
                return status, rooms
            await trio.sleep(0.02)

    with trio.fail_after(20):
        async with running(tmp_path) as s:
            monkeypatch.setattr(s.admin, "stall_s", 1.0)  # the readiness window only
            await s.replay_done()
            status, rooms = await readyz(s)
            assert status == 503
            assert rooms["silent"]["ready"] is False
            assert "no record received yet" in rooms["silent"]["reason"]
            assert "websocket:0" in rooms["silent"]["reason"]
            assert rooms["replay"]["ready"] is True  # delivering, then played out

            # The feed delivers: ready.
            await s.feed.send(env("roomUser", {"viewerCount": 12}))
            status, rooms = await readyz_until(s, lambda status, rooms: status == 200)
            assert rooms["silent"]["reason"].startswith("delivering")

            # Silent for longer than the stall window: not ready, and it says so.
            status, rooms = await readyz_until(s, lambda status, rooms: status == 503)
            assert "no record for" in rooms["silent"]["reason"]
            assert "stall window 1s" in rooms["silent"]["reason"]
            assert rooms["replay"] == {
                "room": "replay",
                "ready": True,
                "reason": "source replay:0 finished (feed played out)",
            }

            # The stream ends: its silence is explained from then on.
            await s.feed.send(env("streamEnd", {}))
            status, rooms = await readyz_until(
                s, lambda status, rooms: rooms["silent"]["reason"] == "stream ended"
            )
            assert status == 200


async def test_metrics_count_what_was_fed(tmp_path: Path) -> None:
    """/metrics parses and its counters equal what the replay fed (bad, duplicate, unknown)."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            await s.replay_done()
            r = await s.client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=")
            found = samples(r.text)

            def v(name: str, **labels: str) -> float:
                return value(found, name, **labels)

            room = "replay"
            assert v("meksd_records_received_total", room=room) == 8
            assert v("meksd_events_total", room=room) == 5
            assert v("meksd_events_applied_total", room=room) == 4
            assert v("meksd_events_duplicate_total", room=room) == 1
            assert v("meksd_events_rejected_total", room=room, reason="not_json") == 1
            assert v("meksd_events_rejected_total", room=room, reason="wrong_type") == 1
            assert v("meksd_events_unknown_total", room=room, type="questionNew") == 1
            assert v("meksd_source_records_total", room=room, source="replay:0") == 8
            assert v("meksd_source_state", room=room, source="replay:0", state="finished") == 1
            assert v("meksd_source_state", room=room, source="replay:0", state="connected") == 0
            feed = s.app.rooms[room].feed.statistics()
            assert v("meksd_deltas_published_total", room=room) == feed.published >= 1
            assert v("meksd_published_bytes_total", room=room) == feed.published_bytes
            assert v("meksd_room_ready", room=room) == 1
            assert v("meksd_room_ready", room="silent") == 0
            assert v("meksd_records_received_total", room="silent") == 0
            assert v("meksd_ingest_queue_depth", room=room) == 0
            assert v("meksd_ingest_queue_peak", room=room) >= 1
            assert v("meksd_source_failovers_total", room=room) == 0
            assert v("meksd_actor_restarts_total", room=room) == 0
            assert v("meksd_rooms") == 2
            # Histograms and process metrics are there.
            assert ("meksd_event_loop_lag_seconds_count", frozenset()) in found
            assert any(name == "process_cpu_seconds_total" for name, _ in found)


async def test_api_rooms_and_snapshot_equal_what_a_dashboard_gets(tmp_path: Path) -> None:
    """/api/rooms/{id} is byte for byte the snapshot a subscribing dashboard receives."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            await s.replay_done()
            url = f"ws://127.0.0.1:{s.app.dashboards.port}/ws"
            async with open_websocket_url(url) as ws:
                assert orjson.loads(await ws.get_message())["type"] == "welcome"
                await ws.send_message('{"type": "subscribe", "room": "replay"}')
                snapshot = await ws.get_message()
                assert orjson.loads(snapshot)["type"] == "snapshot"

                r = await s.client.get("/api/rooms/replay")
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/json"
                assert r.content.decode() == snapshot
                message = r.json()
                assert message["room"] == "replay"
                assert message["state"]["totals"]["diamonds"] == 11
                assert r.headers["x-meksd-seq"] == str(message["seq"])

                r = await s.client.get("/api/rooms")
                assert r.status_code == 200
                rooms = {room["id"]: room for room in r.json()}
                assert sorted(rooms) == ["replay", "silent"]
                replay = rooms["replay"]
                assert replay["epoch"] == message["epoch"]
                assert replay["seq"] == message["seq"]
                assert replay["live"] == "live"
                assert replay["totals"] == message["state"]["totals"]
                assert replay["viewers"] == message["state"]["viewers"]
                assert replay["dashboards"] == 1
                assert rooms["silent"]["dashboards"] == 0
                assert replay["ready"] is True
                assert replay["sources"][0]["name"] == "replay:0"
                assert replay["sources"][0]["state"] == "finished"
                assert replay["sources"][0]["records"] == len(REPLAY_LINES)
                assert rooms["silent"]["sources"][0]["state"] == "connected"

                found = samples((await s.client.get("/metrics")).text)
                assert value(found, "meksd_room_dashboards", room="replay") == 1
                assert value(found, "meksd_room_dashboards", room="silent") == 0
                assert value(found, "meksd_dashboard_connections") == 1
                assert value(found, "meksd_dashboard_connections_accepted_total") == 1


async def test_a_failing_handler_answers_500_and_the_server_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a handler is a JSON 500 (no traceback sent); other routes still work."""

    def broken(*args: object, **kwargs: object) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(admin_module, "room_summary", broken)
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            r = await s.client.get("/api/rooms")
            assert r.status_code == 500
            assert r.json()["error"] == "internal"
            assert "boom" not in r.text
            r = await s.client.get("/healthz")
            assert r.status_code == 200


async def test_stop_is_graceful_and_closes_the_listener(tmp_path: Path) -> None:
    """stop() returns once run() has returned; the port no longer accepts connections."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            second = AdminServer(s.app, listen="127.0.0.1:0", grace_s=1.0)
            done = trio.Event()

            async def run_second(*, task_status: trio.TaskStatus[None]) -> None:
                await second.run(task_status=task_status)
                done.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(run_second)
                async with httpx.AsyncClient(base_url=second.url) as client:
                    assert (await client.get("/healthz")).status_code == 200
                    await second.stop()  # the client's keep-alive connection is still open
                    assert done.is_set()
                    with pytest.raises(httpx.ConnectError):
                        await client.get("/healthz", headers={"connection": "close"})
            # The app's own admin server is unaffected.
            assert (await s.client.get("/healthz")).status_code == 200


async def test_cancelling_run_stops_the_server(tmp_path: Path) -> None:
    """Cancelling run() (the app's shutdown path) ends it promptly and frees the port."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            server = AdminServer(s.app, listen="127.0.0.1:0")
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
                    scope.cancel()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", server.port)
            await server.stop()  # after run returned: a no-op


async def test_bind_failure_is_raised_from_start(tmp_path: Path) -> None:
    """A port already in use fails nursery.start instead of reporting started."""
    with trio.fail_after(15):
        async with running(tmp_path) as s:
            taken = AdminServer(s.app, listen=f"127.0.0.1:{s.admin.port}")
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError):
                    await nursery.start(taken.run)


@attrs.define
class _StubSource:
    name: str = "stub:0"


@attrs.define
class _StubRoom:
    room_id: str = "quiet"
    sources: list[_StubSource] = attrs.field(factory=list)
    counters: RoomCounters = attrs.field(factory=RoomCounters)


def test_a_room_without_sources_is_ready() -> None:
    """A room with no source configured is ready: nothing is expected of it."""
    readiness = room_readiness(_StubRoom(), 100.0)  # type: ignore[arg-type]
    assert readiness.ready
    assert readiness.reason == "no source configured"
