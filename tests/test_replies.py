"""Operator replies: validation, the sender against a faulty upstream, deadlines, shutdown."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import h11
import orjson
import pytest
import trio

from meksd.config import parse_config
from meksd.core.commands import apply_command
from meksd.core.reduce import new_room
from meksd.model.commands import SendReply
from meksd.model.state import RoomConfig
from meksd.model.wire import Command
from meksd.runtime.actor import Probe, RoomActor
from meksd.runtime.app import App
from meksd.runtime.commands import CommandRouter, answer_command
from tests.support import DashClient, open_dashboard


class Upstream:
    """A fake chat upstream on 127.0.0.1 that injects faults and records accepted keys."""

    def __init__(self, *, faults: bool = True, always: int | None = None, hang: bool = False):
        self.rng = random.Random(7)
        self.faults = faults
        self.always = always
        self.hang = hang
        self.accepted: dict[str, int] = defaultdict(int)
        self.order: dict[str, list[str]] = defaultdict(list)
        self.requests = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    key = dict(event.headers).get(b"idempotency-key", b"").decode()
                    body = b""
                    while not isinstance(event, h11.EndOfMessage):
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(event, h11.Data):
                            body += event.data
                    status, headers = await self._decide(key, orjson.loads(body))
                    if status == 0:
                        return  # dropped: close without an answer
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=status, headers=[("content-length", "0"), *headers]
                            )
                        )
                    )
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def _decide(self, key: str, body: dict[str, Any]) -> tuple[int, list[tuple[str, str]]]:
        self.requests += 1
        if self.hang:
            await trio.sleep_forever()
        if self.always is not None:
            return self.always, []
        roll = self.rng.random() if self.faults else 1.0
        if roll < 0.10:
            return 0, []
        if roll < 0.15:
            return 500, []
        if roll < 0.18:
            return 429, [("retry-after", "0.01")]
        if key not in self.accepted:
            self.order[body["room"]].append(body["reply_id"])
        self.accepted[key] += 1
        if roll < 0.20:
            await trio.sleep(0.3)  # past the attempt timeout: the client retries
        return 200, []


def config(
    port: int,
    *,
    deadline: float = 60.0,
    rooms: tuple[str, ...] = ("a", "b", "c"),
    rpm: float = 1e9,
    burst: int = 100_000,
) -> str:
    return """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
shutdown_grace_s = 1.0
""" + "".join(
        f"""
[[rooms]]
id = "{room}"
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/never"
backoff_initial_s = 5.0
[rooms.send]
url = "http://127.0.0.1:{port}/reply"
token = "t0ken"
reply_deadline_s = {deadline}
attempt_timeout_s = 0.1
backoff_initial_s = 0.01
backoff_max_s = 0.05
queue = 1000
replies_per_minute = {rpm}
reply_burst = {burst}
"""
        for room in rooms
    )


async def submit(app: App, room: str, n: int, prefix: str = "x") -> list[str]:
    router = app.dashboards.commands
    assert router is not None
    ids = []
    for i in range(n):
        result = await router.submit(room, SendReply(f"{prefix}{i}", f"hello {i}", origin="c0"))
        assert result.ok, result
        assert result.reply_id is not None
        ids.append(result.reply_id)
    return ids


async def wait_settled(app: App, rooms: tuple[str, ...]) -> None:
    for _ in range(10_000):
        if all(r.status != "pending" for room in rooms for r in app.rooms[room].state.replies):
            return
        await trio.sleep(0.01)
    raise AssertionError("replies still pending")


async def test_two_thousand_replies_through_a_faulty_upstream_settle_once_in_order(
    nursery: trio.Nursery,
) -> None:
    """2,000 replies over 3 rooms against drops, 500s, 429s and slow answers: each settled once, no key accepted twice, order kept."""
    upstream = Upstream()
    await nursery.start(upstream.run)
    app: App = await nursery.start(App(parse_config(config(upstream.port))).run)
    rooms = ("a", "b", "c")
    counts = {"a": 667, "b": 667, "c": 666}
    settled: list[str] = []
    for room in rooms:
        app.rooms[room].reply_hooks.append(lambda reply, _v: settled.append(reply.reply_id))
    ids: dict[str, list[str]] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as inner:
            for room in rooms:

                async def one(room: str = room) -> None:
                    ids[room] = await submit(app, room, counts[room])

                inner.start_soon(one)
        await wait_settled(app, rooms)
    assert sorted(settled) == sorted(i for room in rooms for i in ids[room])  # once each
    for room in rooms:  # a key re-presented (a retry after a lost answer) is not accepted again
        assert len(upstream.order[room]) == len(set(upstream.order[room]))
    sent = {
        r.reply_id for room in rooms for r in app.rooms[room].state.replies if r.status == "sent"
    }
    replies = [r for room in rooms for r in app.rooms[room].state.replies]
    assert len(replies) <= 3 * 50  # settled ones are trimmed to chat_history
    c = [app.rooms[room].counters for room in rooms]
    total_sent = sum(x.replies_sent for x in c)
    failed = sum(sum(x.replies_failed.values()) for x in c)
    assert total_sent + failed == 2000
    for room in rooms:  # first acceptance of each key follows the room's order
        assert upstream.order[room] == [i for i in ids[room] if i in set(upstream.order[room])]
    assert set(upstream.accepted) >= sent
    ratio = total_sent / 2000
    print(
        f"\nreplies: 2000, sent {total_sent}, failed {failed}, success {ratio:.2%}, "
        f"attempts {sum(x.reply_attempts for x in c)}, upstream requests {upstream.requests}, "
        f"keys re-presented {sum(n - 1 for n in upstream.accepted.values())}"
    )
    assert ratio >= 0.999
    nursery.cancel_scope.cancel()


def test_bad_reply_text_is_refused_with_a_clear_error() -> None:
    """Empty, over-long and control-character replies are refused `bad_args` and change nothing."""
    state = new_room("r", "e1", RoomConfig(max_reply_chars=10))
    for i, (text, words) in enumerate(
        [("", "empty"), ("   ", "empty"), ("x" * 11, "too long"), ("a\x07b", "control")]
    ):
        new, delta, result = apply_command(state, SendReply(f"c{i}", text), epoch="")
        assert (result.ok, result.error) == (False, "bad_args")
        assert words in (result.message or "")
        assert new.replies == () and delta.empty
    new, delta, result = apply_command(state, SendReply("ok", "hi 👋🏽"), epoch="")
    assert result.ok and result.reply_id == "r:e1:1"
    assert [r.status for r in new.replies] == ["pending"] and delta.replies


async def test_a_viewer_is_forbidden_to_reply() -> None:
    """`chat.reply` from a viewer is acked `forbidden` without reaching the room."""
    msg = Command(id="v1", room="a", action="chat.reply", args={"text": "hi"})
    ack = await answer_command(msg, role="viewer", known_room=True, router=None, conn_id="c1")
    assert (ack["ok"], ack["error"]) == (False, "forbidden")


async def test_a_reply_the_upstream_keeps_refusing_fails_at_its_deadline(
    nursery: trio.Nursery,
) -> None:
    """An upstream answering 503 forever: the reply fails `deadline` once, after retries."""
    upstream = Upstream(always=503)
    await nursery.start(upstream.run)
    app: App = await nursery.start(
        App(parse_config(config(upstream.port, deadline=0.5, rooms=("a",)))).run
    )
    with trio.fail_after(10):
        (reply_id,) = await submit(app, "a", 1)
        await wait_settled(app, ("a",))
    (reply,) = app.rooms["a"].state.replies
    assert (reply.reply_id, reply.status, reply.error) == (reply_id, "failed", "deadline")
    assert upstream.requests > 1
    assert app.rooms["a"].counters.replies_failed == {"deadline": 1}
    nursery.cancel_scope.cancel()


async def test_a_refusing_upstream_fails_a_reply_at_once(nursery: trio.Nursery) -> None:
    """A 400 is not retried: the reply fails `rejected_400` after one attempt."""
    upstream = Upstream(always=400)
    await nursery.start(upstream.run)
    app: App = await nursery.start(App(parse_config(config(upstream.port, rooms=("a",)))).run)
    with trio.fail_after(10):
        await submit(app, "a", 1)
        await wait_settled(app, ("a",))
    (reply,) = app.rooms["a"].state.replies
    assert (reply.status, reply.error, upstream.requests) == ("failed", "rejected_400", 1)
    nursery.cancel_scope.cancel()


async def test_shutdown_settles_replies_in_flight_as_failed(nursery: trio.Nursery) -> None:
    """Stopping rooms while the upstream hangs settles every pending reply `failed: shutdown`, once."""
    upstream = Upstream(hang=True)
    await nursery.start(upstream.run)
    app: App = await nursery.start(App(parse_config(config(upstream.port, rooms=("a",)))).run)
    settled: list[tuple[str, bool, str | None]] = []
    room = app.rooms["a"]
    room.reply_hooks.append(lambda r, v: settled.append((r.reply_id, v.ok, v.error)))
    with trio.fail_after(10):
        ids = await submit(app, "a", 5)
        while upstream.requests == 0:
            await trio.sleep(0.01)
        app.stop_room("a", keep_feed=True)
        while room.state.replies[-1].status == "pending":
            await trio.sleep(0.01)
    assert [(r.reply_id, r.status, r.error) for r in room.state.replies] == [
        (i, "failed", "shutdown") for i in ids
    ]
    assert settled == [(i, False, "shutdown") for i in ids]
    assert room.feed.state.replies == room.state.replies  # published
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("value,expected", [("2", 2.0), ("0.5", 0.5), ("soon", None), (None, None)])
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds; anything else falls back to backoff."""
    from meksd.runtime.replies import retry_after_s

    assert retry_after_s(value) == expected


async def test_the_operator_gets_ack_then_reply_result_and_every_dashboard_sees_it_sent(
    nursery: trio.Nursery,
) -> None:
    """Over a WebSocket: `ack {ok, reply_id}`, then `reply_result` to the sender only; every dashboard's view shows the reply `sent`."""
    upstream = Upstream(faults=False)
    await nursery.start(upstream.run)
    app: App = await nursery.start(App(parse_config(config(upstream.port, rooms=("a",)))).run)
    url = f"ws://127.0.0.1:{app.dashboards.port}/ws"
    sender, other = DashClient(url), DashClient(url)
    with trio.fail_after(10):
        async with open_dashboard(url) as ws1, open_dashboard(url) as ws2:
            sender.ws, other.ws = ws1, ws2
            for client in (sender, other):
                await client.subscribe("a")
                await client.read_until(lambda c=client: c.views["a"].state is not None)
            await sender.send(
                {
                    "type": "command",
                    "id": "r1",
                    "room": "a",
                    "action": "chat.reply",
                    "args": {"text": "thanks!"},
                }
            )

            def result_of(c: DashClient, kind: str) -> list[dict[str, Any]]:
                return [m for m in c.others if m["type"] == kind]

            await sender.read_until(lambda: result_of(sender, "reply_result"))
            (ack,) = result_of(sender, "ack")
            (done,) = result_of(sender, "reply_result")
            assert ack["ok"] and ack["reply_id"] == done["reply_id"]
            assert done == {"type": "reply_result", "reply_id": ack["reply_id"], "ok": True}

            def shows_sent(c: DashClient) -> bool:
                state = c.views["a"].state or {}
                return [r["status"] for r in state.get("replies", [])] == ["sent"]

            for client in (sender, other):
                await client.read_until(lambda c=client: shows_sent(c))
            assert not result_of(other, "reply_result")
    assert upstream.accepted == {ack["reply_id"]: 1}
    nursery.cancel_scope.cancel()


async def rate_limited_app(nursery: trio.Nursery) -> tuple[App, CommandRouter]:
    """An app with room ``a`` sending to a faultless upstream, replies limited to a
    burst of 2 then 1 a minute per operator; and its command router."""
    upstream = Upstream(faults=False)
    await nursery.start(upstream.run)
    app: App = await nursery.start(
        App(parse_config(config(upstream.port, rooms=("a",), rpm=1.0, burst=2))).run
    )
    router = app.dashboards.commands
    assert router is not None
    return app, router


async def test_replies_beyond_an_operators_rate_are_refused(nursery: trio.Nursery) -> None:
    """Past `reply_burst`, an operator's replies are acked `rate_limited`; another operator is not affected."""
    _, router = await rate_limited_app(nursery)
    with trio.fail_after(10):
        results = [
            await router.submit("a", SendReply(f"k{i}", "hi", operator="ann")) for i in range(3)
        ]
        retry = await router.submit("a", SendReply("k0", "hi", operator="ann"))
        other = await router.submit("a", SendReply("b0", "hi", operator="bob"))
    assert [(r.ok, r.error) for r in results] == [
        (True, None),
        (True, None),
        (False, "rate_limited"),
    ]
    assert retry.ok and retry.duplicate  # a retried id is answered, not limited
    assert other.ok
    nursery.cancel_scope.cancel()


async def test_an_actor_restart_does_not_refill_the_reply_buckets(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limit outlives a crash of the room's actor: an operator who used the
    burst before the restart is still refused after it."""
    app, router = await rate_limited_app(nursery)
    room = app.rooms["a"]
    with trio.fail_after(10):
        for i in range(2):
            assert (await router.submit("a", SendReply(f"k{i}", "hi", operator="ann"))).ok
        step = RoomActor.step
        crashed = trio.Event()

        def crash_once(self: RoomActor, *args: Any, **kwargs: Any) -> None:
            if not crashed.is_set():
                crashed.set()
                raise RuntimeError("injected actor crash")
            step(self, *args, **kwargs)

        monkeypatch.setattr(RoomActor, "step", crash_once)
        inbox = room.inbox
        assert inbox is not None
        await inbox.send(Probe())  # the step that takes it crashes the actor
        await crashed.wait()
        monkeypatch.setattr(RoomActor, "step", step)
        third = await router.submit("a", SendReply("k2", "hi", operator="ann"))
    assert room.counters.actor_restarts == 1
    assert (third.ok, third.error) == (False, "rate_limited")
    nursery.cancel_scope.cancel()


def test_a_room_restored_with_pending_replies_fails_them_as_restart() -> None:
    """Pending replies in a restored state have no sender any more: they start `failed: restart`."""
    from meksd.runtime.actor import Owned
    from meksd.runtime.room import Room

    settings = parse_config(config(9, rooms=("a",))).rooms[0]
    state = new_room("a", "e1", RoomConfig())
    state, _, _ = apply_command(state, SendReply("c1", "hi"), epoch="")
    room = Room(settings, tick_s=0.016, ring_size=16, owned=Owned(state))
    assert [(r.status, r.error) for r in room.state.replies] == [("failed", "restart")]
