"""Operator commands over real WebSockets: acks, retries, viewers, resets, disconnects."""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request, TextMessage

from meksd.config import parse_config
from meksd.model.events import ChatMessage, User
from meksd.model.state import RoomState
from meksd.runtime.actor import InboxItem, Probe
from meksd.runtime.app import App
from tests.support import DashClient, open_dashboard

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
heartbeat_s = 30.0
shutdown_grace_s = 2.0
""" + "".join(
    f"""
[[rooms]]
id = "{room}"
chat_history = 5
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/never"
backoff_initial_s = 5.0
"""
    for room in ("a", "b")
)


@pytest.fixture
async def app(nursery: trio.Nursery) -> AsyncIterator[App]:
    running: App = await nursery.start(App(parse_config(CONFIG)).run)
    yield running
    nursery.cancel_scope.cancel()


def url(app: App) -> str:
    return f"ws://127.0.0.1:{app.dashboards.port}/ws"


async def settle(app: App, room: str) -> None:
    """Everything queued for the room's actor applied and published."""
    inbox = app.rooms[room].inbox
    assert inbox is not None
    probe = Probe()
    await inbox.send(probe)
    await probe.done.wait()
    while not app.rooms[room].actor_idle():
        await trio.sleep(0.002)


async def add_chat(app: App, room: str, *msg_ids: str) -> None:
    inbox = app.rooms[room].inbox
    assert inbox is not None
    for msg_id in msg_ids:
        await inbox.send(ChatMessage(msg_id, User("7", "ann", "Ann"), "hi", 0.0, 0))
    await settle(app, room)


def ack_for(client: DashClient, cmd_id: str) -> list[dict[str, Any]]:
    return [m for m in client.others if m["type"] == "ack" and m["id"] == cmd_id]


async def command(
    client: DashClient, cmd_id: str, action: str, room: str = "a", **args: Any
) -> dict[str, Any]:
    """Send a command and read until its ack; the ack."""
    before = len(ack_for(client, cmd_id))
    await client.send(
        {"type": "command", "id": cmd_id, "room": room, "action": action, "args": args}
    )
    await client.read_until(lambda: len(ack_for(client, cmd_id)) > before)
    return ack_for(client, cmd_id)[-1]


def server_view(app: App, room: str) -> dict[str, Any]:
    from meksd.core.wire import snapshot_message

    feed = app.rooms[room].feed
    return snapshot_message(feed.state, feed.seq)["state"]


async def test_every_command_is_acked_and_a_pin_reaches_every_dashboard(app: App) -> None:
    """ok for an applied pin (seen by another dashboard in its next delta), a reason for every refusal."""
    await add_chat(app, "a", "m1", "m2")
    operator, watcher = DashClient(url(app)), DashClient(url(app))
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws1, open_dashboard(url(app)) as ws2:
            operator.ws, watcher.ws = ws1, ws2
            await watcher.subscribe("a")
            await watcher.read_until(lambda: watcher.views["a"].snapshots == 1)
            seq = watcher.views["a"].seq
            assert await command(operator, "c1", "chat.pin", msg_id="m1") == {
                "type": "ack",
                "id": "c1",
                "ok": True,
            }
            await watcher.read_until(lambda: watcher.views["a"].seq > seq)
            state = watcher.views["a"].state
            assert state is not None
            assert [(c["msg_id"], c["pinned"]) for c in state["chat"]] == [
                ("m1", True),
                ("m2", False),
            ]
            assert watcher.views["a"].snapshots == 1, "a delta, not a resync"
            assert state == server_view(app, "a")

            refusals = {
                "c2": await command(operator, "c2", "chat.delete", msg_id="m1"),
                "c3": await command(operator, "c3", "chat.hide"),
                "c4": await command(operator, "c4", "chat.pin", room="zz", msg_id="m1"),
                "c5": await command(operator, "c5", "chat.hide", msg_id="nope"),
            }
            codes = {cmd_id: (a["ok"], a["error"]) for cmd_id, a in refusals.items()}
            assert codes == {
                "c2": (False, "unknown_action"),
                "c3": (False, "bad_args"),
                "c4": (False, "unknown_room"),
                "c5": (False, "unknown_message"),
            }
            assert all(a["message"] for a in refusals.values())
            await operator.send({"type": "command", "room": "a", "action": "chat.pin"})
            await operator.read_until(lambda: operator.others[-1]["type"] == "error")
            assert operator.others[-1]["code"] == "bad_request", "no id: nothing to ack"


async def test_a_retried_id_is_acked_again_not_applied_twice(app: App) -> None:
    """The same id, again and from another connection, gets the same answer marked duplicate; nothing reapplies."""
    await add_chat(app, "a", "m1")
    client = DashClient(url(app))
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            client.ws = ws
            first = await command(client, "pin-1", "chat.pin", msg_id="m1")
            assert first["ok"] and "duplicate" not in first
            assert (await command(client, "unpin-1", "chat.unpin", msg_id="m1"))["ok"]
            again = await command(client, "pin-1", "chat.pin", msg_id="m1")
        async with open_dashboard(url(app)) as ws:
            client.ws = ws
            after_reconnect = await command(client, "pin-1", "chat.pin", msg_id="m1")
            reused = await command(client, "pin-1", "chat.hide", msg_id="m1")
    assert again == after_reconnect == {**first, "duplicate": True}
    assert (reused["ok"], reused["error"]) == (False, "id_reused")
    assert [(c.pinned, c.hidden) for c in app.rooms["a"].state.chat] == [(False, False)]


async def test_viewers_and_out_of_scope_operators_get_forbidden(nursery: trio.Nursery) -> None:
    """With tokens, a viewer is acked `forbidden` for every action, and so is an operator outside its rooms."""
    viewer, scoped = "viewer-secret", "operator-of-b"
    tokens = "".join(
        f'\n[[auth.tokens]]\nname = "{name}"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"'
        f'\nrole = "{role}"\n{rooms}'
        for name, token, role, rooms in [
            ("wall", viewer, "viewer", ""),
            ("ops-b", scoped, "operator", 'rooms = ["b"]'),
        ]
    )
    app: App = await nursery.start(App(parse_config(CONFIG + tokens)).run)
    await add_chat(app, "a", "m1")
    before = app.rooms["a"].state
    acks: list[dict[str, Any]] = []
    with trio.fail_after(10):
        for token in (viewer, scoped):
            client = DashClient(url(app))
            async with open_dashboard(url(app)) as ws:
                client.ws = ws
                await client.send({"type": "hello", "token": token})
                await client.read_until(lambda c=client: any(m.get("role") for m in c.others))
                acks.append(await command(client, "v1", "chat.pin", msg_id="m1"))
                acks.append(await command(client, "v2", "session.reset"))
    assert [(a["ok"], a["error"]) for a in acks] == [(False, "forbidden")] * 4
    await settle(app, "a")
    assert app.rooms["a"].state is before
    nursery.cancel_scope.cancel()


async def test_session_reset_resyncs_every_dashboard_once(app: App) -> None:
    """A reset is acked with the new epoch; every dashboard of the room gets its snapshot; a retry resets nothing."""
    await add_chat(app, "a", "m1", "m2")
    old_epoch = app.rooms["a"].feed.epoch
    ended: list[RoomState] = []
    app.rooms["a"].session_hooks.append(ended.append)
    clients = [DashClient(url(app)) for _ in range(3)]
    with trio.fail_after(10):
        async with (
            open_dashboard(url(app)) as w0,
            open_dashboard(url(app)) as w1,
            open_dashboard(url(app)) as w2,
        ):
            for client, ws in zip(clients, (w0, w1, w2), strict=True):
                client.ws = ws
                await client.subscribe("a")
                await client.subscribe("b")
                await client.read_until(lambda c=client: c.views["a"].snapshots == 1)
            ack = await command(clients[0], "reset-1", "session.reset")
            assert ack["ok"] and ack["epoch"] != old_epoch
            for client in clients:
                await client.read_until(lambda c=client: c.views["a"].snapshots == 2)
                view = client.views["a"]
                assert (view.epoch, view.seq) == (ack["epoch"], 0)
                assert view.state is not None and view.state["chat"] == []
            await add_chat(app, "a", "m3")
            retry = await command(clients[1], "reset-1", "session.reset")
            assert retry == {**ack, "duplicate": True}
            for client in clients:
                await client.read_until(lambda c=client: c.views["a"].seq == 1)
                assert client.views["a"].snapshots == 2, "no second reset"
                assert client.views["b"].snapshots == 1, "other rooms untouched"
    assert [s.epoch for s in ended] == [old_epoch]
    assert app.rooms["a"].previous is ended[0]
    assert [c.msg_id for c in ended[0].chat] == ["m1", "m2"]


async def send_and_vanish(app: App, message: dict[str, Any], *, reset: bool) -> None:
    """Open a WebSocket, wait for ``welcome``, send ``message`` and drop the TCP
    connection at once, without a close frame: with ``reset``, an RST (the server
    may or may not get to read the command), else a FIN (it reads it, then EOF)."""
    ws = WSConnection(ConnectionType.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", app.dashboards.port)
    try:
        await stream.send_all(ws.send(Request(host="127.0.0.1", target="/ws")))
        welcomed = False
        while not welcomed:
            ws.receive_data(await stream.receive_some())
            welcomed = any(isinstance(e, TextMessage) for e in ws.events())
        await stream.send_all(ws.send(TextMessage(data=orjson.dumps(message).decode())))
        if reset:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        await trio.aclose_forcefully(stream)


async def test_commands_racing_a_disconnect_apply_once_and_a_retry_says_so(app: App) -> None:
    """A client whose connection dies right after it sent a reset, then retries the id, finds exactly one reset."""
    resets: list[RoomState] = []
    app.rooms["a"].session_hooks.append(resets.append)
    router = app.dashboards.commands
    real = app.rooms["a"].inbox
    assert router is not None and real is not None
    router.timeout_s = 0.1
    duplicates: list[bool] = []
    with trio.fail_after(30):
        for i in range(12):
            cmd = {"type": "command", "id": f"r{i}", "room": "a", "action": "session.reset"}
            if i % 3 == 0:  # a clean close right after sending
                async with open_dashboard(url(app)) as ws:
                    await ws.send_message(orjson.dumps(cmd).decode())
            elif i % 3 == 1:  # the connection is reset right after sending
                await send_and_vanish(app, cmd, reset=True)
            else:  # gone while the room is busy: the command waits, times out, is withdrawn
                held_send, held_receive = trio.open_memory_channel[InboxItem](10)
                router.inbox_of = lambda room, held=held_send: held
                await send_and_vanish(app, cmd, reset=False)
                while held_send.statistics().current_buffer_used == 0:
                    await trio.sleep(0.01)
                await trio.sleep(0.25)  # past the router's timeout
                router.inbox_of = app._room_inbox
                await real.send(held_receive.receive_nowait())  # the actor must skip it
            client = DashClient(url(app))
            async with open_dashboard(url(app)) as ws:
                client.ws = ws
                retry = await command(client, f"r{i}", "session.reset")
            assert retry["ok"]
            assert retry["epoch"] == app.rooms["a"].feed.epoch
            assert len(resets) == i + 1, "one reset per id, whether the first got through or not"
            duplicates.append(bool(retry.get("duplicate")))
    assert duplicates[0::3] == [True] * 4, "closed cleanly: applied, the retry is a duplicate"
    assert duplicates[2::3] == [False] * 4, "withdrawn: never applied, the retry applies it"


async def test_a_command_the_room_did_not_take_in_time_is_acked_as_not_applied(
    app: App,
) -> None:
    """If the actor does not reach the command in time, the ack says `timeout` and it is never applied."""
    await add_chat(app, "a", "m1")
    real = app.rooms["a"].inbox
    assert real is not None
    held_send, held_receive = trio.open_memory_channel[InboxItem](10)
    router = app.dashboards.commands
    assert router is not None
    router.inbox_of = lambda room: held_send
    router.timeout_s = 0.2
    client = DashClient(url(app))
    with trio.fail_after(10):
        async with open_dashboard(url(app)) as ws:
            client.ws = ws
            ack = await command(client, "late", "chat.pin", msg_id="m1")
            assert (ack["ok"], ack["error"]) == (False, "timeout")
            # The actor gets the command after all: it must skip it.
            await real.send(held_receive.receive_nowait())
            await settle(app, "a")
            assert not app.rooms["a"].state.chat[0].pinned
            router.inbox_of = app._room_inbox
            retry = await command(client, "late", "chat.pin", msg_id="m1")
    assert retry == {"type": "ack", "id": "late", "ok": True}, "applied now, once"
    assert app.rooms["a"].state.chat[0].pinned
