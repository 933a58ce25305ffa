"""A minimal dashboard: subscribe to a room and print its leaderboard as it changes.

    python examples/watch.py demo [ws://127.0.0.1:8765/ws]
    python examples/watch.py alice "ws://meksd.lan:8765/ws?token=meks_..."   # with a token

It applies deltas with meksd's reference client (``meksd.core.wire.apply_delta``)
and resumes with ``since`` after a reconnect, as any dashboard should.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from meksd.core.wire import apply_delta


def show(room: str, seq: int, state: dict[str, Any]) -> None:
    totals = state["totals"]
    print(f"\n{room} seq={seq} live={state['live']} viewers={state['viewers']} "
          f"diamonds={totals['diamonds']} gifts={totals['gifts']} likes={totals['likes']}")
    for rank, row in enumerate(state["leaderboard"][:10], 1):
        print(f"  {rank:>2}. {row['nickname'][:24]:<24} {row['diamonds']:>8}")


async def main(room: str, url: str) -> None:
    epoch: str | None = None
    seq = 0
    state: dict[str, Any] | None = None
    while True:
        try:
            async with open_websocket_url(url) as ws:
                sub: dict[str, Any] = {"type": "subscribe", "room": room}
                if epoch is not None:
                    sub["since"] = {"epoch": epoch, "seq": seq}
                await ws.send_message(orjson.dumps(sub).decode())
                last_shown = 0.0
                while True:
                    decoded = orjson.loads(await ws.get_message())
                    for msg in decoded if isinstance(decoded, list) else [decoded]:
                        if msg["type"] == "snapshot":
                            epoch, seq, state = msg["epoch"], msg["seq"], msg["state"]
                        elif msg["type"] == "delta" and state is not None:
                            state, seq = apply_delta(state, msg), msg["seq"]
                        elif msg["type"] in ("error", "lagged"):
                            print(msg, file=sys.stderr)
                    if state is not None and trio.current_time() - last_shown > 1:
                        show(room, seq, state)
                        last_shown = trio.current_time()
        except (ConnectionClosed, HandshakeError, OSError) as exc:
            print(f"disconnected ({exc!r}); reconnecting", file=sys.stderr)
            await trio.sleep(1)


if __name__ == "__main__":
    room_arg = sys.argv[1] if len(sys.argv) > 1 else "demo"
    url_arg = sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:8765/ws"
    try:
        trio.run(main, room_arg, url_arg)
    except KeyboardInterrupt:
        pass
