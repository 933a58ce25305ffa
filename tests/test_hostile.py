"""A hostile crowd against a running daemon: it stays up, serves the good, leaks nothing.

During a feed burst: 200 clients connect and leave at random (some with a close
handshake, some by dropping the socket), 10 subscribe and never read, 10 send
garbage, 5 come with wrong tokens or from a foreign origin. Meanwhile 5
well-behaved dashboards must see contiguous seqs (``RoomView`` raises on a gap) and
end with exactly the server's state. Afterwards no connection is left and no
Dashboard object survives; a second crowd of connections leaves the traced memory
where it was.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from typing import Any

import orjson
import trio

from meksd.config import parse_config
from meksd.core.access import hash_token
from meksd.core.wire import snapshot_message
from meksd.runtime.app import App
from meksd.runtime.dashboard import Dashboard
from meksd.runtime.wsconn import WsConnection
from tests.rawws import BINARY, TEXT, RawClosed, open_raw
from tests.secsupport import wait_until
from tests.support import DashClient, open_dashboard, serve_feed
from tests.test_e2e import expected_state, make_feed

TOKEN = "meks_hostile-test-operator"
VIEWER = "meks_hostile-test-viewer"
ORIGIN = "https://ops.example.com"

CONFIG = f"""
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_ms = 16
ring_size = 64
send_timeout_s = 1.0
heartbeat_s = 30.0
max_connections_per_address = 1000
shutdown_grace_s = 1.0

[storage]
enabled = false

[auth]
allowed_origins = ["{ORIGIN}"]
auth_timeout_s = 2.0

[[auth.tokens]]
name = "ops"
sha256 = "{hash_token(TOKEN)}"
role = "operator"

[[auth.tokens]]
name = "wall"
sha256 = "{hash_token(VIEWER)}"
role = "viewer"
rooms = ["r1"]

[[rooms]]
id = "r1"

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{{port}}/feed"
backoff_initial_s = 0.05
"""

GOOD, CHURN, STUCK, GARBAGE = 5, 200, 10, 10
VISITS = 300
"""Connections of the second crowd, whose memory must all come back."""


def feed_payloads() -> list[bytes]:
    """A bursty feed, with a stretch of long chat messages that fills stuck sockets."""
    payloads = make_feed(2500, seed=11)
    big = [
        orjson.dumps(
            {
                "event": "chat",
                "data": {"msgId": f"big{i}", "userId": i % 9, "comment": f"{i} " + "x" * 2000},
            }
        )
        for i in range(600)
    ]
    return payloads[:1200] + big + payloads[1200:]


def garbage_frames(rng: random.Random) -> list[tuple[int, bytes]]:
    choices: list[tuple[int, bytes]] = [
        (TEXT, b"{not json"),
        (TEXT, b"[" * 2000 + b"]" * 2000),
        (TEXT, b'{"type": "subscribe", "room": 5}'),
        (TEXT, b'{"type": "subscribe", "room": "r1", "since": {"epoch": "x", "seq": 1e999}}'),
        (TEXT, b'{"type": "ping", "id": ' + b"9" * 400 + b"}"),
        (TEXT, b'{"type": "command", "id": "c", "room": "r1", "action": "chat.pin", "args": []}'),
        (TEXT, b'{"type": "hello", "token": 12}'),
        (BINARY, bytes(rng.randrange(256) for _ in range(64))),
        (TEXT, b'"\xff\xfe"'),  # invalid UTF-8: the connection ends
    ]
    return [rng.choice(choices) for _ in range(rng.randrange(5, 40))]


async def test_hostile_mix_during_a_burst() -> None:
    """The daemon stays up; good dashboards see contiguous seqs and the server's final state; nothing leaks."""
    payloads = feed_payloads()
    truth = expected_state(payloads, "r1")
    good = [DashClient("") for _ in range(GOOD)]
    refusals: list[int | None] = []
    stuck_ready = 0
    go = trio.Event()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port, _ = await serve_feed(payloads, nursery=nursery, chunk=100, pause_s=0.02, go=go)
            app = App(parse_config(CONFIG.format(port=port)))
            await nursery.start(app.run)
            ws_port = app.dashboards.port
            url = f"ws://127.0.0.1:{ws_port}/ws"
            bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
            room = app.rooms["r1"]

            async def well_behaved(client: DashClient) -> None:
                async with open_dashboard(url, headers=bearer) as ws:
                    client.ws = ws
                    await client.subscribe("r1")
                    while True:
                        client.take(await ws.get_message())

            async def churner(seed: int) -> None:
                r = random.Random(seed)
                await trio.sleep(r.uniform(0, 1.5))
                token = r.choice([TOKEN, VIEWER])
                with trio.move_on_after(r.uniform(0.0, 0.4)):
                    if r.random() < 0.5:  # a library client that closes properly
                        async with open_dashboard(f"{url}?token={token}") as ws:
                            await ws.send_message('{"type": "subscribe", "room": "r1"}')
                            for _ in range(r.randrange(0, 30)):
                                await ws.get_message()
                    else:  # a raw client that drops the socket mid-stream
                        async with open_raw(ws_port) as raw:
                            await raw.handshake(ws_port, f"/ws?token={token}")
                            await raw.send_text('{"type": "subscribe", "room": "r1"}')
                            for _ in range(r.randrange(0, 30)):
                                await raw.recv_frame()

            async def never_reads(*, task_status: trio.TaskStatus[None]) -> None:
                nonlocal stuck_ready
                async with open_raw(ws_port, rcvbuf=4096) as raw:
                    await raw.handshake(ws_port, headers=[("Authorization", f"Bearer {TOKEN}")])
                    await raw.send_text('{"type": "subscribe", "room": "r1"}')
                    stuck_ready += 1
                    task_status.started()
                    await trio.sleep_forever()

            async def garbage(seed: int) -> None:
                r = random.Random(seed)
                async with open_raw(ws_port) as raw:
                    await raw.handshake(ws_port, headers=[("Authorization", f"Bearer {TOKEN}")])
                    try:
                        for opcode, payload in garbage_frames(r):
                            await raw.send_frame(opcode, payload)
                            await trio.sleep(r.uniform(0, 0.05))
                    except (RawClosed, trio.BrokenResourceError):
                        pass  # closed for its garbage: fine

            async def intruder(kind: str) -> None:
                async with open_raw(ws_port) as raw:
                    if kind == "bearer":
                        status = await raw.handshake(
                            ws_port, headers=[("Authorization", "Bearer meks_guess")]
                        )
                    elif kind == "query":
                        status = await raw.handshake(ws_port, "/ws?token=meks_guess")
                    elif kind == "origin":
                        status = await raw.handshake(
                            ws_port,
                            headers=[
                                ("Origin", "https://evil.example"),
                                ("Authorization", f"Bearer {TOKEN}"),
                            ],
                        )
                    else:  # hello with a wrong token, or no token at all
                        status = await raw.handshake(ws_port, headers=[("Origin", ORIGIN)])
                        assert status == 101
                        await raw.recv_json()
                        await raw.send_text('{"type": "subscribe", "room": "r1"}')
                        assert (await raw.recv_json())["code"] == "unauthorized"  # type: ignore[index]
                        if kind == "hello":
                            await raw.send_text('{"type": "hello", "token": "meks_guess"}')
                        try:
                            while True:
                                await raw.recv_frame()
                        except RawClosed as closed:
                            status = closed.code or 0
                refusals.append(status)

            async with trio.open_nursery() as clients:
                for client in good:
                    clients.start_soon(well_behaved, client)
                for _ in range(STUCK):
                    await clients.start(never_reads)
                await wait_until(
                    lambda: all(c.views.get("r1") and c.views["r1"].state for c in good)
                )
                go.set()
                async with trio.open_nursery() as crowd:
                    for i in range(CHURN):
                        crowd.start_soon(churner, i)
                    for i in range(GARBAGE):
                        crowd.start_soon(garbage, 1000 + i)
                    for kind in ("bearer", "query", "origin", "hello", "silent"):
                        crowd.start_soon(intruder, kind)
                await wait_until(
                    lambda: room.counters.records >= len(payloads) and room.actor_idle(),
                    poll_s=0.05,
                )
                final_seq = room.feed.seq
                await wait_until(
                    lambda: all(c.views["r1"].seq >= final_seq for c in good), poll_s=0.02
                )
                server_state = snapshot_message(room.feed.state, room.feed.seq)["state"]
                # A stuck dashboard is closed send_timeout_s after its socket filled.
                await wait_until(lambda: app.dashboards.totals.limited["send_timeout"] >= 1)
                stuck_killed = app.dashboards.totals.limited["send_timeout"]
                clients.cancel_scope.cancel()

            # everyone has left: nothing of theirs remains
            await wait_until(
                lambda: not app.dashboards.dashboards and not app.dashboards._per_address
            )
            assert app.dashboards.totals.errors == 0, "a connection handler failed"
            assert await app.healthy(), "the rooms still answer"
            gc.collect()
            assert not [o for o in gc.get_objects() if isinstance(o, Dashboard | WsConnection)]

            # a second crowd must not grow memory: what each connection took is returned
            async def visit(i: int) -> None:
                async with open_dashboard(f"{url}?token={TOKEN}") as ws:
                    await ws.send_message('{"type": "subscribe", "room": "r1"}')
                    await ws.get_message()
                    await ws.get_message()

            async def crowd_of(n: int) -> None:
                async with trio.open_nursery() as visitors:
                    for i in range(n):
                        visitors.start_soon(visit, i)
                await wait_until(
                    lambda: not app.dashboards.dashboards and not app.dashboards._per_address
                )
                gc.collect()

            await crowd_of(50)  # warm caches (snapshot encoding, logging) before measuring
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                await crowd_of(VISITS)
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            # What the connection code (ours and the WebSocket stack) allocated and kept.
            # trio's own scheduler structures are left out: its deadline heap drops
            # expired entries lazily, in batches (bounded, not a leak).
            ours = [
                tracemalloc.Filter(True, f"*/{package}/*")
                for package in ("meksd", "trio_websocket", "wsproto", "h11")
            ]
            before, after = before.filter_traces(ours), after.filter_traces(ours)
            grown = sum(stat.size_diff for stat in after.compare_to(before, "lineno"))
            nursery.cancel_scope.cancel()

    assert stuck_ready == STUCK
    assert stuck_killed >= 1, "no stuck dashboard was ever closed"
    for client in good:
        assert client.views["r1"].state == server_state
    assert server_state["totals"] == truth["totals"]
    assert sorted(refusals) == sorted([401, 401, 403, 1008, 1008]), refusals
    assert grown < 50_000, f"{VISITS} connections left {grown} bytes behind"
    limited: dict[str, Any] = dict(app.dashboards.totals.limited)
    assert limited.get("bad_token") == 1 and limited.get("auth_timeout") == 1
