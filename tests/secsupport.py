"""Shared pieces of the security tests: configs with tokens, a running app, close codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from meksd.config import Config, parse_config
from meksd.core.access import hash_token
from meksd.model.events import ChatMessage, User
from meksd.runtime.actor import Probe
from meksd.runtime.app import App

OPS_TOKEN = "meks_test-operator-of-a"
WALL_TOKEN = "meks_test-viewer-of-all"
ORIGIN = "https://ops.example.com"

SERVER = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
heartbeat_s = 30.0
shutdown_grace_s = 1.0
{server}

[storage]
enabled = false
"""

AUTH = f"""
[auth]
allowed_origins = ["{ORIGIN}"]
{{auth}}

[[auth.tokens]]
name = "ops-a"
sha256 = "{hash_token(OPS_TOKEN)}"
role = "operator"
rooms = ["a"]

[[auth.tokens]]
name = "wall"
sha256 = "{hash_token(WALL_TOKEN)}"
role = "viewer"
"""

ROOMS = """
[[rooms]]
id = "{id}"
[[rooms.sources]]
kind = "simulator"
rate = 0.0
burst_rate = 0.0
battles = false
"""


def make_config(
    *, tokens: bool = True, server: str = "", auth: str = "", rooms: tuple[str, ...] = ("a", "b")
) -> Config:
    """Two rooms fed by nothing; with ``tokens``, the ``ops-a`` and ``wall`` tokens."""
    text = SERVER.format(server=server)
    if tokens:
        text += AUTH.format(auth=auth)
    elif auth:
        text += f"[auth]\n{auth}\n"
    text += "".join(ROOMS.format(id=room) for room in rooms)
    return parse_config(text)


@asynccontextmanager
async def running_app(config: Config) -> AsyncIterator[App]:
    """An App serving on 127.0.0.1 ephemeral ports, cancelled on exit."""
    async with trio.open_nursery() as nursery:
        app: App = await nursery.start(App(config).run)
        try:
            yield app
        finally:
            nursery.cancel_scope.cancel()


def ws_url(app: App, query: str = "") -> str:
    return f"ws://127.0.0.1:{app.dashboards.port}/ws" + (f"?{query}" if query else "")


async def recv(ws: WebSocketConnection) -> Any:
    return orjson.loads(await ws.get_message())


async def send(ws: WebSocketConnection, msg: dict[str, Any]) -> None:
    await ws.send_message(orjson.dumps(msg).decode())


async def close_code(ws: WebSocketConnection) -> int | None:
    """Read until the server closes; its close code (None: no close frame)."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as exc:
        return exc.reason.code if exc.reason is not None else None


async def inject(app: App, room: str, n: int, *, start: int = 0, size: int = 0) -> None:
    """Feed ``n`` chat events straight into a room's actor; wait until published."""
    inbox = app.rooms[room].inbox
    assert inbox is not None
    now = trio.current_time()
    for i in range(start, start + n):
        text = f"hi {i}".ljust(size, ".")
        await inbox.send(ChatMessage(f"m{i}", User(str(i % 7), f"u{i % 7}"), text, now, 0))
    probe = Probe()
    await inbox.send(probe)
    await probe.done.wait()
    while not app.rooms[room].actor_idle():
        await trio.sleep(0.002)


async def wait_until(predicate: Any, *, poll_s: float = 0.005) -> None:
    """Poll a server-side condition nothing signals (bounded by the caller's fail_after)."""
    while not predicate():
        await trio.sleep(poll_s)
