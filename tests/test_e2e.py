"""End to end: fake feed → meksd (in process) → real WebSocket dashboards."""

from __future__ import annotations

import random
from typing import Any

import orjson
import trio

from meksd.config import parse_config
from meksd.core.normalize import normalize
from meksd.core.reduce import new_room, reduce
from meksd.core.wire import snapshot_message
from meksd.model.events import Rejected, Unknown
from meksd.model.raw import RawRecord
from meksd.model.state import RoomConfig
from meksd.runtime.app import App
from tests.support import DashClient, open_dashboard, serve_feed

GIFTS = [
    ("5655", "Rose", 1),
    ("5269", "TikTok", 1),
    ("5487", "Finger Heart", 5),
    ("6064", "Galaxy", 1000),
]


def make_feed(n: int, *, seed: int) -> list[bytes]:
    """A bursty feed: single gifts, full streaks, chat, likes, and re-sent duplicates."""
    rng = random.Random(seed)
    out: list[bytes] = []
    msg = 0

    def env(event: str, data: dict[str, Any]) -> bytes:
        return orjson.dumps({"event": event, "data": data})

    while len(out) < n:
        msg += 1
        uid = rng.randrange(60)
        user = {
            "userId": uid if rng.random() < 0.5 else str(uid),
            "uniqueId": f"u{uid}",
            "nickname": f"User {uid}",
        }
        r = rng.random()
        gift_id, name, diamonds = rng.choice(GIFTS)
        if r < 0.45:
            out.append(
                env(
                    "gift",
                    {
                        **user,
                        "msgId": f"m{msg}",
                        "giftId": gift_id,
                        "giftName": name,
                        "giftType": 0,
                        "repeatCount": rng.randint(1, 3),
                        "repeatEnd": False,
                        "diamondCount": diamonds,
                    },
                )
            )
        elif r < 0.6:
            group = f"grp{msg}"
            count = rng.randint(1, 6)
            for k in range(1, count + 1):
                out.append(
                    env(
                        "gift",
                        {
                            **user,
                            "msgId": f"m{msg}-{k}",
                            "giftId": gift_id,
                            "giftName": name,
                            "giftType": 1,
                            "repeatCount": k,
                            "repeatEnd": False,
                            "groupId": group,
                            "diamondCount": diamonds,
                        },
                    )
                )
            out.append(
                env(
                    "gift",
                    {
                        **user,
                        "msgId": f"m{msg}-end",
                        "giftId": gift_id,
                        "giftName": name,
                        "giftType": 1,
                        "repeatCount": count,
                        "repeatEnd": True,
                        "groupId": group,
                        "diamondCount": diamonds,
                    },
                )
            )
        elif r < 0.85:
            out.append(env("chat", {**user, "msgId": f"m{msg}", "comment": f"hello {msg}"}))
        elif r < 0.95:
            out.append(env("like", {**user, "msgId": f"m{msg}", "likeCount": rng.randint(1, 15)}))
        elif out:
            out.append(rng.choice(out))  # re-delivered: must not count twice
    return out


def expected_state(payloads: list[bytes], room: str) -> dict[str, Any]:
    """The truth, computed with the pure core in one go."""
    state = new_room(room, "truth", RoomConfig())
    for p in payloads:
        items = normalize(RawRecord(p, 0.0, 0), max_bytes=65536)
        events = [i for i in items if not isinstance(i, (Rejected, Unknown))]
        state, _ = reduce(state, events)
    return snapshot_message(state, 0)["state"]


CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_ms = 16
ring_size = 64
send_timeout_s = 2.0
heartbeat_s = 30.0

[[rooms]]
id = "r1"

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.05
"""


async def test_burst_to_fifty_dashboards_some_resuming_one_stuck() -> None:
    """Every live dashboard sees contiguous seqs (or lagged+snapshot) and ends equal to the server."""
    payloads = make_feed(3000, seed=7)
    truth = expected_state(payloads, "r1")
    steady = [DashClient("") for _ in range(40)]
    resumers = [DashClient("") for _ in range(8)]
    slow = DashClient("")
    go = trio.Event()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            port, _sent = await serve_feed(
                payloads, nursery=nursery, chunk=100, pause_s=0.02, go=go
            )
            app = App(parse_config(CONFIG.format(port=port)))
            await nursery.start(app.run)
            url = f"ws://127.0.0.1:{app.dashboards.port}/ws"
            room = app.rooms["r1"]

            async def reader(client: DashClient, *, pause: float = 0.0) -> None:
                async with open_dashboard(url) as ws:
                    client.ws = ws
                    await client.subscribe("r1", resume=True)
                    while True:
                        client.take(await ws.get_message())
                        if pause:
                            await trio.sleep(pause)

            async def resumer(client: DashClient, seed: int) -> None:
                rng = random.Random(seed)
                for _ in range(3):  # leave mid-burst, come back with `since`
                    async with open_dashboard(url) as ws:
                        client.ws = ws
                        await client.subscribe("r1", resume=True)
                        with trio.move_on_after(rng.uniform(0.05, 0.3)):
                            while True:
                                client.take(await ws.get_message())
                    await trio.sleep(rng.uniform(0.0, 0.1))
                await reader(client)

            async def stuck(*, task_status: trio.TaskStatus[None]) -> None:
                async with open_dashboard(url) as ws:
                    await ws.send_message('{"type": "subscribe", "room": "r1"}')
                    task_status.started()
                    await trio.sleep_forever()  # never reads

            async with trio.open_nursery() as clients:
                for c in steady:
                    clients.start_soon(reader, c)
                clients.start_soon(lambda: reader(slow, pause=0.002))
                for i, c in enumerate(resumers):
                    clients.start_soon(resumer, c, i)
                await clients.start(stuck)
                while not all(c.views.get("r1") and c.views["r1"].state for c in steady):
                    await trio.sleep(0.01)
                go.set()
                # Wait until the room has taken every record and published it all.
                while room.counters.records < len(payloads) or not room.actor_idle():
                    await trio.sleep(0.05)
                final_seq = room.feed.seq
                everyone = [*steady, *resumers, slow]
                while any(c.views["r1"].seq < final_seq for c in everyone):
                    await trio.sleep(0.05)
                clients.cancel_scope.cancel()
            server_state = snapshot_message(room.feed.state, room.feed.seq)["state"]
            nursery.cancel_scope.cancel()

    assert room.feed.state == room.state, "everything applied was published"
    for c in everyone:
        assert c.views["r1"].state == server_state
    assert server_state["totals"] == truth["totals"]
    assert [(r["user_id"], r["diamonds"]) for r in server_state["leaderboard"]] == [
        (r["user_id"], r["diamonds"]) for r in truth["leaderboard"]
    ]
    assert room.counters.duplicates > 0
    # The resumers really did resume, and someone was lagged and resynced.
    assert sum(c.views["r1"].snapshots for c in resumers) >= len(resumers)
    assert sum(c.views["r1"].deltas for c in everyone) > 0
