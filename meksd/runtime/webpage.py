"""The dashboard page, served by the admin HTTP server.

::

    GET /                      the page (meksd/web/index.html)
    GET /app.js, /style.css    its script and style sheet
    GET /config.json           where the page finds the dashboard WebSocket
    GET /api/rooms/{id}/previous
                               the session the last ``session.reset`` ended (404: none)

The files ship inside the package (``meksd/web/``), are read once, and are sent
with ``Cache-Control: no-cache`` (the browser revalidates, so an upgrade shows at
the next load) and a Content-Security-Policy that allows nothing but this origin
and WebSocket connections: no inline script, no third-party resource.

The admin HTTP and the dashboard WebSocket are two listeners on two ports, so the
page asks ``/config.json`` where to connect::

    {"ws_port": 8765, "ws_path": "/ws", "ws_url": null, "protocol": "meks.v1"}

``ws_url`` is null when the page should connect to the host it was loaded from
(``ws://<page host>:<ws_port>/ws``): the WebSocket listens on every address, on
loopback, or on the same address as the admin HTTP. It is set when the WebSocket
listens on one specific other address. A ``?ws=`` query parameter on the page
overrides both (e.g. behind a reverse proxy).
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meksd.core.wire import state_to_wire

if TYPE_CHECKING:
    from meksd.runtime.app import App

__all__ = ["page_routes", "ws_config"]

FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _read(name: str) -> bytes:
    return (resources.files("meksd") / "web" / name).read_bytes()


def ws_config(ws_host: str, ws_port: int, admin_host: str) -> dict[str, object]:
    """What ``/config.json`` says, for a WebSocket bound to ``ws_host:ws_port`` and
    the admin HTTP bound to ``admin_host``."""
    url = None
    if ws_host != admin_host and not _wildcard_or_loopback(ws_host):
        host = f"[{ws_host}]" if ":" in ws_host else ws_host
        url = f"ws://{host}:{ws_port}/ws"
    return {"ws_port": ws_port, "ws_path": "/ws", "ws_url": url, "protocol": "meks.v1"}


def _wildcard_or_loopback(host: str) -> bool:
    if host in ("", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_unspecified or address.is_loopback


def page_routes(app: App) -> list[Route]:
    """The routes to add to the admin HTTP app."""
    cache: dict[str, bytes] = {}

    def static(name: str) -> Response:
        body = cache.get(name)
        if body is None:
            body = cache[name] = _read(name)
        return Response(body, media_type=FILES[name], headers=HEADERS)

    async def index(request: Request) -> Response:
        return static("index.html")

    async def script(request: Request) -> Response:
        return static("app.js")

    async def style(request: Request) -> Response:
        return static("style.css")

    async def config(request: Request) -> Response:
        body = ws_config(app.dashboards.host, app.dashboards.port, app.admin.host)
        return Response(
            orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"}
        )

    async def previous(request: Request) -> Response:
        room_id = request.path_params["room_id"]
        room = app.rooms.get(room_id)
        if room is None:
            body: dict[str, object] = {"error": "unknown_room", "message": f"no room {room_id!r}"}
            return Response(orjson.dumps(body), status_code=404, media_type="application/json")
        if room.previous is None:
            body = {"error": "no_previous_session", "message": "no session.reset since start"}
            return Response(orjson.dumps(body), status_code=404, media_type="application/json")
        state = room.previous
        body = {"room": room_id, "epoch": state.epoch, "state": state_to_wire(state)}
        return Response(orjson.dumps(body), media_type="application/json")

    return [
        Route("/", index, methods=["GET"]),
        Route("/index.html", index, methods=["GET"]),
        Route("/app.js", script, methods=["GET"]),
        Route("/style.css", style, methods=["GET"]),
        Route("/config.json", config, methods=["GET"]),
        Route("/api/rooms/{room_id}/previous", previous, methods=["GET"]),
    ]
