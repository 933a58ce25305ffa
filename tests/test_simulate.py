"""`meksd simulate`: a real subprocess serving the synthetic feed over both protocols."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import trio

from meksd.cli import main
from meksd.runtime.feedserver import FeedLog, FeedServer
from tests.fakefeeds import room_from_toml, wait_for
from tests.support import open_dashboard

URLS = re.compile(rb"ws://127\.0\.0\.1:(\d+)/feed and http://127\.0\.0\.1:(\d+)/poll")


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[tuple[trio.Process, int]]:
    """``meksd simulate --port 0 ARGS`` running; yields the process and its port."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "meksd", "simulate", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = b""
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, "simulate exited before serving"
            line += chunk
        match = URLS.search(line)
        assert match is not None and match[1] == match[2], line
        yield process, int(match[1])
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def test_serves_websocket_and_poll_and_exits_0_on_sigterm() -> None:
    """Both endpoints carry the generated feed; SIGTERM stops it with status 0."""
    with trio.fail_after(20):
        async with simulator("--rate", "200", "--burst-s", "0", "--seed", "7") as (process, port):
            await trio.sleep(0.3)
            async with httpx.AsyncClient() as client:
                first = (await client.get(f"http://127.0.0.1:{port}/poll")).json()
                assert first["events"] and first["cursor"].isdigit()
                kinds = {e["event"] for e in first["events"]}
                assert kinds & {"chat", "gift", "like", "member"}
                nxt = await client.get(f"http://127.0.0.1:{port}/poll?cursor={first['cursor']}")
                assert int(nxt.json()["cursor"]) >= int(first["cursor"])
                bad = await client.get(f"http://127.0.0.1:{port}/poll?cursor=abc")
                assert bad.status_code == 400
            async with open_dashboard(f"ws://127.0.0.1:{port}/feed") as ws:
                messages = [orjson.loads(await ws.get_message()) for _ in range(60)]
            assert all("event" in m and "data" in m for m in messages)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


async def test_a_room_fed_by_the_simulator_over_both_sources() -> None:
    """A room with [websocket, http-poll] sources pointed at the simulator counts events."""
    config = """
[[rooms]]
id = "sim"
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
[[rooms.sources]]
kind = "http-poll"
url = "http://127.0.0.1:{port}/poll"
"""
    with trio.fail_after(20):
        async with simulator("--rate", "100", "--burst-s", "0", "--battles") as (process, port):
            room = room_from_toml(config.format(port=port))
            async with trio.open_nursery() as nursery:
                await nursery.start(room.run)
                await wait_for(lambda: room.state.events > 50)
                assert room.selector.active == 0
                nursery.cancel_scope.cancel()
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0


async def test_end_after_sends_stream_end() -> None:
    """--end-after S appends streamEnd after S seconds and the feed stops."""
    with trio.fail_after(20):
        async with simulator("--rate", "50", "--end-after", "0.3") as (process, port):
            await trio.sleep(0.6)
            async with httpx.AsyncClient() as client:
                body = (await client.get(f"http://127.0.0.1:{port}/poll")).json()
            assert body["events"][-1] == {"event": "streamEnd", "data": {}}
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


def test_bad_options_are_usage_errors(capsys: object) -> None:
    """Missing --port, a bad rate or burst longer than its period exit 64."""
    assert main(["simulate"]) == 64
    assert main(["simulate", "--port", "0", "--rate", "-1"]) == 64
    assert main(["simulate", "--port", "99999"]) == 64
    assert main(["simulate", "--port", "0", "--burst-every", "2", "--burst-s", "3"]) == 64


async def test_feed_server_pages_and_replays() -> None:
    """/poll pages with poll_ms 0 while more waits; /feed replays the last N, then live."""
    log = FeedLog(capacity=100)
    for i in range(250):
        log.append(orjson.dumps({"event": "chat", "data": {"msgId": i}}))
    server = FeedServer(log, page=100, replay=5, poll_ms=700)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.run)
            async with httpx.AsyncClient() as client:
                a = (await client.get(f"http://127.0.0.1:{port}/poll")).json()
                b = (await client.get(f"http://127.0.0.1:{port}/poll?cursor={a['cursor']}")).json()
                missing = await client.get(f"http://127.0.0.1:{port}/nope")
            async with open_dashboard(f"ws://127.0.0.1:{port}/feed") as ws:
                replayed = [orjson.loads(await ws.get_message()) for _ in range(5)]
                log.append(orjson.dumps({"event": "chat", "data": {"msgId": 250}}))
                live = orjson.loads(await ws.get_message())
            nursery.cancel_scope.cancel()
    # Capacity 100: events 150..249 are kept; a first poll starts at the oldest kept.
    assert [e["data"]["msgId"] for e in a["events"]] == list(range(150, 250))
    assert (a["cursor"], a["poll_ms"]) == ("251", 700)
    assert (b["events"], b["cursor"]) == ([], "251")
    assert missing.status_code == 404
    assert [m["data"]["msgId"] for m in replayed] == list(range(245, 250))
    assert live["data"]["msgId"] == 250
    assert (server.polls, server.connects) == (2, 1)
