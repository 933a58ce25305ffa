"""The dashboard page's HTTP side: files, headers, /config.json, the previous session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from meksd.config import parse_config
from meksd.model.commands import ResetSession
from meksd.runtime.app import App
from meksd.runtime.commands import CommandRouter
from meksd.runtime.webpage import ws_config

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
heartbeat_s = 30.0
shutdown_grace_s = 2.0

[[rooms]]
id = "a"
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/never"
backoff_initial_s = 5.0
"""


@pytest.fixture
async def client(nursery: trio.Nursery) -> AsyncIterator[tuple[App, httpx.AsyncClient]]:
    app: App = await nursery.start(App(parse_config(CONFIG)).run)
    async with httpx.AsyncClient(base_url=app.admin.url) as http:
        yield app, http
    nursery.cancel_scope.cancel()


async def test_page_files_are_served_with_their_types_and_a_strict_policy(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """/, /app.js and /style.css come from the package, typed, revalidated, CSP-restricted."""
    _, http = client
    with trio.fail_after(10):
        for path, kind, marker in [
            ("/", "text/html", b'<script src="app.js"'),
            ("/index.html", "text/html", b"<title>meksd dashboard</title>"),
            ("/app.js", "text/javascript", b"requestAnimationFrame"),
            ("/style.css", "text/css", b".leaderboard"),
        ]:
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind), path
            assert marker in response.content, path
            assert response.headers["cache-control"] == "no-cache"
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
        missing = await http.get("/nope.js")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_config_json_tells_the_page_the_websocket_port(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """/config.json names the dashboard listener's real port (bound as port 0 here)."""
    app, http = client
    with trio.fail_after(10):
        body = (await http.get("/config.json")).json()
    assert body == {
        "ws_port": app.dashboards.port,
        "ws_path": "/ws",
        "ws_url": None,
        "protocol": "meks.v1",
    }
    assert app.dashboards.port not in (0, app.admin.port)


def test_ws_url_only_when_the_websocket_is_on_another_specific_address() -> None:
    """The page uses its own host unless the WebSocket listens on one specific other address."""
    assert ws_config("0.0.0.0", 8765, "127.0.0.1")["ws_url"] is None
    assert ws_config("::", 8765, "127.0.0.1")["ws_url"] is None
    assert ws_config("127.0.0.1", 8765, "0.0.0.0")["ws_url"] is None
    assert ws_config("10.0.0.5", 8765, "10.0.0.5")["ws_url"] is None
    assert ws_config("10.0.0.5", 8765, "127.0.0.1")["ws_url"] == "ws://10.0.0.5:8765/ws"
    assert ws_config("fd00::5", 8765, "::1")["ws_url"] == "ws://[fd00::5]:8765/ws"


async def test_previous_session_is_served_after_a_reset(
    client: tuple[App, httpx.AsyncClient],
) -> None:
    """/api/rooms/{id}/previous is 404 until a reset, then the ended session's state."""
    app, http = client
    with trio.fail_after(10):
        none = await http.get("/api/rooms/a/previous")
        assert none.status_code == 404 and none.json()["error"] == "no_previous_session"
        assert (await http.get("/api/rooms/zz/previous")).status_code == 404
        old_epoch = app.rooms["a"].feed.epoch
        router = app.dashboards.commands
        assert isinstance(router, CommandRouter)
        result = await router.submit("a", ResetSession("r1"))
        assert result.ok
        body = (await http.get("/api/rooms/a/previous")).json()
    assert body["epoch"] == old_epoch != app.rooms["a"].feed.epoch
    assert body["room"] == "a" and "leaderboard" in body["state"]
