"""Access control and limits on a running app, over real sockets on 127.0.0.1."""

from __future__ import annotations

import gc
import weakref

import attrs
import trio

from meksd.config import parse_config
from meksd.runtime.dashboard import Dashboard
from tests.rawws import RawClosed, open_raw
from tests.secsupport import (
    OPS_TOKEN,
    ORIGIN,
    WALL_TOKEN,
    close_code,
    inject,
    make_config,
    recv,
    running_app,
    send,
    wait_until,
    ws_url,
)
from tests.support import open_dashboard

BEARER = [(b"authorization", f"Bearer {OPS_TOKEN}".encode())]


async def refused(port: int, *headers: tuple[str, str], target: str = "/ws") -> tuple[int, bytes]:
    """Handshake by hand; the HTTP status and body the server answered."""
    async with open_raw(port) as raw:
        status = await raw.handshake(port, target, headers)
        return status, raw.body


# -- authentication -------------------------------------------------------------------


async def test_header_and_query_tokens_authenticate_at_the_handshake() -> None:
    """A Bearer header or ?token= gives the token's role and rooms in welcome; subscribing works."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            async with open_dashboard(ws_url(app), headers=BEARER) as ws:
                welcome = await recv(ws)
                assert (welcome["role"], welcome["rooms"]) == ("operator", ["a"])
                await send(ws, {"type": "subscribe", "room": "a"})
                assert (await recv(ws))["type"] == "snapshot"
            async with open_dashboard(ws_url(app, f"token={WALL_TOKEN}")) as ws:
                welcome = await recv(ws)
                assert (welcome["role"], welcome["rooms"]) == ("viewer", ["a", "b"])


async def test_bad_tokens_and_foreign_origins_are_refused_at_the_handshake() -> None:
    """401 for a wrong token, 403 for an Origin not allowed: nothing is opened, each is counted."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            port = app.dashboards.port
            status, body = await refused(port, ("Authorization", "Bearer wrong"))
            assert (status, body) == (401, b"meksd: invalid token\n")
            assert (await refused(port, target="/ws?token=wrong"))[0] == 401
            assert (await refused(port, ("Authorization", "Basic eDp5")))[0] == 401
            status, body = await refused(
                port, ("Origin", "https://evil.example"), ("Authorization", f"Bearer {OPS_TOKEN}")
            )
            assert (status, body) == (403, b"meksd: this Origin is not allowed\n")
            assert (await refused(port, target="/other"))[0] == 404
            ok, _ = await refused(
                port, ("Origin", ORIGIN), ("Authorization", f"Bearer {OPS_TOKEN}")
            )
            assert ok == 101
            refusals = app.dashboards.totals.refused
            assert (refusals["unauthorized"], refusals["origin_not_allowed"]) == (3, 1)
            assert refusals["not_found"] == 1
            await wait_until(lambda: not app.dashboards.dashboards)


async def test_before_hello_only_hello_and_ping_are_answered() -> None:
    """Without a token: welcome with no role and no rooms; pings answered; anything else unauthorized."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            async with open_dashboard(ws_url(app)) as ws:
                welcome = await recv(ws)
                assert (welcome["role"], welcome["rooms"]) == (None, [])
                await send(ws, {"type": "ping", "id": 1})
                assert await recv(ws) == {"type": "pong", "id": 1}
                await send(ws, {"type": "subscribe", "room": "a"})
                assert (await recv(ws))["code"] == "unauthorized"
                await send(ws, {"type": "command", "id": "c1", "room": "a", "action": "x"})
                assert (await recv(ws))["code"] == "unauthorized"
                await send(ws, {"type": "hello"})
                assert (await recv(ws))["code"] == "unauthorized"
                await send(ws, {"type": "hello", "token": OPS_TOKEN})
                welcome = await recv(ws)
                assert (welcome["type"], welcome["role"], welcome["rooms"]) == (
                    "welcome",
                    "operator",
                    ["a"],
                )
                await send(ws, {"type": "subscribe", "room": "a"})
                assert (await recv(ws))["type"] == "snapshot"
                await send(ws, {"type": "hello", "token": WALL_TOKEN})
                assert (await recv(ws))["code"] == "bad_request", "one identity per connection"
            assert app.dashboards.totals.limited["unauthorized"] == 2


async def test_hello_with_a_wrong_token_closes_1008() -> None:
    """A wrong token in hello: error unauthorized, then close 1008."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            async with open_dashboard(ws_url(app)) as ws:
                await recv(ws)
                await send(ws, {"type": "hello", "token": "guess"})
                assert (await recv(ws))["code"] == "unauthorized"
                assert await close_code(ws) == 1008
            assert app.dashboards.totals.limited["bad_token"] == 1


async def test_no_token_within_auth_timeout_closes_1008() -> None:
    """A connection that never authenticates is told and closed with 1008 after auth_timeout_s."""
    config = make_config(auth="auth_timeout_s = 0.3")
    with trio.fail_after(10):
        async with running_app(config) as app:
            async with open_dashboard(ws_url(app)) as ws:
                await recv(ws)
                error = await recv(ws)
                assert (error["code"], error["message"]) == (
                    "unauthorized",
                    "no valid token within 0.3s",
                )
                assert await close_code(ws) == 1008
            await wait_until(lambda: not app.dashboards.dashboards)
            assert app.dashboards.totals.limited["auth_timeout"] == 1


async def test_room_scope_and_roles() -> None:
    """A scoped token cannot read or command other rooms (forbidden, existing or not); a viewer cannot command."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            async with open_dashboard(ws_url(app), headers=BEARER) as ws:
                await recv(ws)
                for room in ("b", "nope"):
                    await send(ws, {"type": "subscribe", "room": room})
                    error = await recv(ws)
                    assert (error["code"], error["room"]) == ("forbidden", room)
                await send(ws, {"type": "command", "id": "c1", "room": "b", "action": "x"})
                ack = await recv(ws)
                assert (ack["type"], ack["ok"], ack["error"]) == ("ack", False, "forbidden")
            async with open_dashboard(ws_url(app, f"token={WALL_TOKEN}")) as ws:
                await recv(ws)
                await send(ws, {"type": "command", "id": "c2", "room": "a", "action": "x"})
                ack = await recv(ws)
                assert (ack["ok"], ack["error"]) == (False, "forbidden")
                await send(ws, {"type": "subscribe", "room": "nope"})
                assert (await recv(ws))["code"] == "unknown_room"


async def test_open_mode_on_loopback() -> None:
    """No tokens: everyone is operator; loopback and listed pages may connect, other origins get 403."""
    config = make_config(tokens=False, auth=f'allowed_origins = ["{ORIGIN}"]')
    with trio.fail_after(10):
        async with running_app(config) as app:
            port = app.dashboards.port
            for origin in ("http://127.0.0.1:8766", "http://localhost:3000", ORIGIN):
                assert (await refused(port, ("Origin", origin)))[0] == 101
            assert (await refused(port, ("Origin", "https://evil.example")))[0] == 403
            assert (await refused(port, ("Origin", "null")))[0] == 403
            async with open_dashboard(ws_url(app)) as ws:  # no Origin: a local script
                welcome = await recv(ws)
                assert (welcome["role"], welcome["rooms"]) == ("operator", ["a", "b"])


async def test_reload_revokes_removed_tokens() -> None:
    """SIGHUP semantics: a dashboard whose token was removed is closed 1008; the others stay."""
    config = make_config()
    with trio.fail_after(10):
        async with running_app(config) as app:
            async with (
                open_dashboard(ws_url(app), headers=BEARER) as ops,
                open_dashboard(ws_url(app, f"token={WALL_TOKEN}")) as wall,
            ):
                await recv(ops)
                await recv(wall)
                auth = attrs.evolve(config.auth, tokens=config.auth.tokens[1:])
                await app.reload(attrs.evolve(config, auth=auth))
                assert await close_code(ops) == 1008
                await send(wall, {"type": "ping"})
                assert await recv(wall) == {"type": "pong"}
            assert (await refused(app.dashboards.port, ("Authorization", f"Bearer {OPS_TOKEN}")))[
                0
            ] == 401
            assert app.dashboards.totals.limited["revoked"] == 1


# -- limits ------------------------------------------------------------------------------


async def test_rate_limit_refuses_then_closes_a_flood() -> None:
    """Beyond the burst: rate_limited errors; a sustained flood: close 1008."""
    config = make_config(tokens=False, server="max_messages_per_s = 0.01\nmessage_burst = 3")
    with trio.fail_after(10):
        async with running_app(config) as app:
            async with open_dashboard(ws_url(app)) as ws:
                await recv(ws)
                for i in range(4):
                    await send(ws, {"type": "ping", "id": i})
                replies = [await recv(ws) for _ in range(4)]
                assert [r.get("id") for r in replies[:3]] == [0, 1, 2]
                assert replies[3]["code"] == "rate_limited"
                for i in range(10):
                    await send(ws, {"type": "ping", "id": i})
                assert await close_code(ws) == 1008
            limited = app.dashboards.totals.limited
            assert limited["rate_limited"] >= 1 and limited["rate_abuse"] == 1


async def test_oversized_message_closes_1009_and_is_counted() -> None:
    """A client message over max_message_bytes closes the connection with 1009."""
    config = make_config(tokens=False, server="max_message_bytes = 1000")
    with trio.fail_after(10):
        async with running_app(config) as app:
            async with open_dashboard(ws_url(app)) as ws:
                await recv(ws)
                await ws.send_message('{"type": "ping", "id": "' + "x" * 2000 + '"}')
                assert await close_code(ws) == 1009
            await wait_until(lambda: app.dashboards.totals.limited["message_too_big"] == 1)


async def test_connections_per_address_limit() -> None:
    """Beyond max_connections_per_address from one IP: 429; a slot frees when one leaves."""
    config = make_config(tokens=False, server="max_connections_per_address = 2")
    with trio.fail_after(10):
        async with running_app(config) as app:
            port = app.dashboards.port
            async with open_dashboard(ws_url(app)) as first:
                async with open_dashboard(ws_url(app)):
                    status, body = await refused(port)
                    assert (status, body) == (
                        429,
                        b"meksd: at most 2 connections per client address\n",
                    )
                await recv(first)
                await wait_until(lambda: len(app.dashboards.dashboards) == 1)
                await wait_until(lambda: sum(app.dashboards._per_address.values()) == 1)
                async with open_dashboard(ws_url(app)) as again:
                    assert (await recv(again))["type"] == "welcome"
            await wait_until(lambda: not app.dashboards._per_address)
            assert app.dashboards.totals.refused["too_many_from_address"] == 1


async def test_room_and_subscription_limits() -> None:
    """max_room_dashboards gives room_full; max_subscriptions gives too_many_subscriptions."""
    config = make_config(tokens=False, server="max_room_dashboards = 1\nmax_subscriptions = 1")
    with trio.fail_after(10):
        async with running_app(config) as app:
            async with open_dashboard(ws_url(app)) as one, open_dashboard(ws_url(app)) as two:
                await recv(one)
                await recv(two)
                await send(one, {"type": "subscribe", "room": "a"})
                assert (await recv(one))["type"] == "snapshot"
                await send(one, {"type": "subscribe", "room": "a"})  # a restart, not a second
                assert (await recv(one))["type"] == "snapshot"
                await send(one, {"type": "subscribe", "room": "b"})
                assert (await recv(one))["code"] == "too_many_subscriptions"
                await send(two, {"type": "subscribe", "room": "a"})
                assert (await recv(two))["code"] == "room_full"
                await send(one, {"type": "unsubscribe", "room": "a"})
                await send(one, {"type": "ping"})
                assert await recv(one) == {"type": "pong"}
                await send(two, {"type": "subscribe", "room": "a"})
                assert (await recv(two))["type"] == "snapshot"
            limited = app.dashboards.totals.limited
            assert (limited["room_full"], limited["too_many_subscriptions"]) == (1, 1)


async def test_handshake_timeout_and_garbage_handshakes() -> None:
    """A client that never completes its handshake is dropped after handshake_timeout_s; garbage gets 400."""
    config = make_config(tokens=False, server="handshake_timeout_s = 0.3")
    with trio.fail_after(10):
        async with running_app(config) as app:
            port = app.dashboards.port
            async with open_raw(port) as silent:
                await silent.send_raw(b"GET /ws HTTP/1.1\r\n")
                assert await silent.stream.receive_some() == b""
            async with open_raw(port) as garbage:
                await garbage.send_raw(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 8)
                data = b""
                while chunk := await garbage.stream.receive_some():
                    data += chunk
                assert data.startswith(b"HTTP/1.1 400")
            await wait_until(lambda: not app.dashboards._per_address)
            refusals = app.dashboards.totals.refused
            assert (refusals["handshake_timeout"], refusals["bad_handshake"]) == (1, 1)
            assert app.dashboards.totals.errors == 0


async def test_a_dashboard_that_stops_reading_is_dropped_and_freed() -> None:
    """A stuck client is killed after send_timeout_s: no frame follows a cut one, the Dashboard is freed."""
    config = make_config(tokens=False, server="send_timeout_s = 0.3\ntick_ms = 1\nring_size = 4")
    with trio.fail_after(20):
        async with running_app(config) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                raw.stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
                assert await raw.handshake(port) == 101
                await raw.send_text('{"type": "subscribe", "room": "a"}')
                await wait_until(lambda: app.dashboards.room_load("a") == 1)
                (dash,) = app.dashboards.dashboards
                ref = weakref.ref(dash)
                del dash
                i = 0
                while app.dashboards.totals.killed == 0:
                    await inject(app, "a", 1, start=i, size=4000)
                    i += 1
                    assert i < 5000, "the server never gave up on the stuck client"
                await wait_until(lambda: not app.dashboards._per_address)  # handler done
                # Now read everything that was sent: only whole frames, then a close
                # frame (1013) if no frame was cut, else the connection just ends.
                code: int | None = 0
                try:
                    while True:
                        await raw.recv_frame()
                except RawClosed as closed:
                    code = closed.code
                assert code in (None, 1013)
            assert app.dashboards.totals.limited["send_timeout"] == 1
            gc.collect()
            assert ref() is None, "the killed Dashboard is still referenced"


async def test_metrics_expose_refusals_and_limits() -> None:
    """meksd_dashboard_refused_total and meksd_dashboard_limited_total count by reason from 0."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app:
            await refused(app.dashboards.port, ("Origin", "https://evil.example"))
            text = app.metrics.exposition().decode()
            assert 'meksd_dashboard_refused_total{reason="origin_not_allowed"} 1.0' in text
            assert 'meksd_dashboard_refused_total{reason="unauthorized"} 0.0' in text
            assert 'meksd_dashboard_limited_total{limit="rate_limited"} 0.0' in text
            assert "meksd_dashboard_handler_errors_total 0.0" in text


def test_non_loopback_listener_without_tokens_is_a_config_error() -> None:
    """0.0.0.0 without [[auth.tokens]] does not load; with a token it does."""
    from meksd.errors import ConfigError

    text = '[server]\nws_listen = "0.0.0.0:8765"\n[[rooms]]\nid = "a"\n[[rooms.sources]]\nkind = "simulator"\n'
    try:
        parse_config(text)
    except ConfigError as exc:
        (message,) = exc.messages
        assert message.endswith("@ $.auth.tokens")
        assert "not a loopback address" in message and "meksd token new" in message
    else:
        raise AssertionError("a public listener without tokens was accepted")
    with_token = text + f'[[auth.tokens]]\nname = "t"\nsha256 = "{"a" * 64}"\n'
    assert parse_config(with_token).auth.tokens[0].role == "viewer"


async def test_dashboard_exposes_role_and_rooms() -> None:
    """Dashboard.role, .rooms and .can_command follow the connection's grant (what command handling reads)."""
    with trio.fail_after(10):
        async with running_app(make_config()) as app, open_dashboard(ws_url(app)) as ws:
            await recv(ws)
            (dash,) = app.dashboards.dashboards
            assert isinstance(dash, Dashboard)
            assert (dash.role, dash.rooms, dash.can_command("a")) == (None, frozenset(), False)
            await send(ws, {"type": "hello", "token": OPS_TOKEN})
            await recv(ws)
            assert (dash.role, dash.rooms) == ("operator", frozenset({"a"}))
            assert dash.can_command("a") and not dash.can_command("b")
            assert dash.can_read("a") and not dash.can_read("b")
