"""A minimal asyncio ``websockets`` broadcaster: what a Python user would write.

    python py_websockets.py <port> <feed-url>

Every feed message is sent to every connected dashboard as it arrives
(``websockets.broadcast``: one frame per client, no waiting for slow ones).
Prints ``LISTENING <port>`` once the server is up and ``FEED`` once the feed is open.
"""

import asyncio
import sys

import websockets

CLIENTS: set = set()


async def dashboard(ws):
    CLIENTS.add(ws)
    try:
        async for _ in ws:  # dashboards may send a subscribe; nothing to do with it
            pass
    finally:
        CLIENTS.discard(ws)


async def main(port: int, feed_url: str) -> None:
    async with websockets.serve(dashboard, "127.0.0.1", port, compression=None):
        print(f"LISTENING {port}", flush=True)
        async with websockets.connect(feed_url, compression=None, max_size=None) as feed:
            print("FEED", flush=True)
            async for message in feed:
                websockets.broadcast(CLIENTS, message)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
