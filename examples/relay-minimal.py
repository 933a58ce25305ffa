"""A minimal feed relay: JSON lines on stdin, served to meksd over WebSocket.

    your-connector | python examples/relay-minimal.py
    python examples/relay-minimal.py < examples/demo-feed.jsonl

Every line read from stdin (one envelope ``{"event": ..., "data": {...}}`` or an
array of them, as a TikTok LIVE connector emits) is sent as one text message to every
client connected to ws://127.0.0.1:9001/feed. Point a room at it::

    [[rooms.sources]]
    kind = "websocket"
    url = "ws://127.0.0.1:9001/feed"

Lines read while no meksd is connected are dropped, and a slow client slows the
relay: meksd reads as fast as its room takes events, and buffers nothing itself.
"""

import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

clients: set[WebSocketConnection] = set()


async def feed(request: WebSocketRequest) -> None:
    if request.path != "/feed":
        await request.reject(404)
        return
    ws = await request.accept()
    clients.add(ws)
    try:
        while True:
            await ws.get_message()  # nothing expected; wait for the close
    except ConnectionClosed:
        pass
    finally:
        clients.discard(ws)


async def pump_stdin() -> None:
    async for line in trio.wrap_file(sys.stdin):
        if line.strip():
            for ws in list(clients):
                try:
                    await ws.send_message(line.strip())
                except ConnectionClosed:
                    clients.discard(ws)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_websocket, feed, "127.0.0.1", 9001, None)
        await pump_stdin()
        nursery.cancel_scope.cancel()  # stdin ended


if __name__ == "__main__":
    trio.run(main)
