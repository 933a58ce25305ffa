"""Forward one TikTok LIVE room to meksd: TikTokLive in, WebSocket out.

    pip install -r requirements.txt
    python relay.py <tiktok-username> [port]          (default port 9002)

meksd connects to ws://127.0.0.1:<port>/feed (a ``websocket`` source). Every
connection first gets the last ``REPLAY`` envelopes, then each new one: after a
reconnect or a failover meksd misses nothing, and its msgId memory drops what it
already had. See README.md.

The mapping (``to_envelope``) is plain Python over the events' attributes, with no
import of TikTokLive, so that meksd's tests can run it on recorded shapes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

HISTORY = 500
"""Envelopes kept for replay."""
REPLAY = 50
"""Envelopes sent first to each new meksd connection."""


def pick(obj: Any, *paths: str, default: Any = None) -> Any:
    """The first of the dotted attribute ``paths`` of ``obj`` that is set."""
    for path in paths:
        value = obj
        for name in path.split("."):
            value = getattr(value, name, None)
            if value is None:
                break
        if value is not None and value != "":
            return value
    return default


def _id(value: Any) -> str | None:
    return None if value in (None, "", 0, "0") else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _user(obj: Any) -> dict[str, Any]:
    return {
        "userId": _id(pick(obj, "user_id", "id")),
        "uniqueId": pick(obj, "unique_id", "display_id", default=""),
        "nickname": pick(obj, "nickname", default=""),
    }


def _common(event: Any) -> dict[str, Any]:
    msg_id = _id(pick(event, "base_message.message_id", "common.msg_id", "msg_id"))
    return {} if msg_id is None else {"msgId": msg_id}


def _with_user(event: Any) -> dict[str, Any]:
    return {**_common(event), **_user(pick(event, "user", default=event))}


def _gift(event: Any) -> dict[str, Any]:
    gift = pick(event, "gift", "gift_details", default=event)
    return {
        **_with_user(event),
        "giftId": _id(pick(gift, "id", default=pick(event, "gift_id"))),
        "giftName": pick(gift, "name", "gift_name", default=""),
        "giftType": _int(pick(gift, "type", "gift_type")),
        "repeatCount": max(1, _int(pick(event, "repeat_count"), 1)),
        "repeatEnd": bool(pick(event, "repeat_end", default=False)),
        "groupId": _id(pick(event, "group_id")),
        "diamondCount": _int(pick(gift, "diamond_count")),
    }


def _chat(event: Any) -> dict[str, Any]:
    return {**_with_user(event), "comment": pick(event, "comment", "content", default="")}


def _like(event: Any) -> dict[str, Any]:
    data = {**_with_user(event), "likeCount": _int(pick(event, "count", "like_count"), 1)}
    total = pick(event, "total", "total_like_count")
    if total is not None:
        data["totalLikeCount"] = _int(total)
    return data


def _viewers(event: Any) -> dict[str, Any]:
    return {**_common(event), "viewerCount": _int(pick(event, "m_total", "total", "total_user"))}


def _battle(event: Any) -> dict[str, Any]:
    hosts = pick(event, "battle_users", default=None)
    if hosts is None:
        anchors = pick(event, "anchor_info", "anchors_info", default={}) or {}
        hosts = [pick(a, "user", default=a) for a in getattr(anchors, "values", lambda: [])()]
    duration = pick(event, "battle_duration", "battle_setting.duration")
    return {
        **_common(event),
        "battleId": _id(pick(event, "battle_id")),
        "battleStatus": _int(pick(event, "battle_status", "action")),
        "battleDuration": None if duration is None else _int(duration),
        "battleUsers": [_user(h) for h in hosts],
    }


def _armies(event: Any) -> dict[str, Any]:
    armies = []
    items = pick(event, "battle_items", default={}) or {}
    for host, item in getattr(items, "items", lambda: [])():
        supporters = pick(item, "user_armies", "participants", default=[]) or []
        armies.append(
            {
                "hostUserId": _id(host),
                "points": _int(pick(item, "host_score", "points")),
                "participants": [
                    {**_user(s), "points": _int(pick(s, "score", "points"))} for s in supporters
                ],
            }
        )
    return {**_common(event), "battleId": _id(pick(event, "battle_id")), "battleArmies": armies}


MAPPERS: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    # TikTokLive event class -> (meksd event, mapper)
    "GiftEvent": ("gift", _gift),
    "CommentEvent": ("chat", _chat),
    "LikeEvent": ("like", _like),
    "JoinEvent": ("member", _with_user),
    "FollowEvent": ("follow", _with_user),
    "ShareEvent": ("share", _with_user),
    "RoomUserSeqEvent": ("roomUser", _viewers),
    "LinkMicBattleEvent": ("linkMicBattle", _battle),
    "LinkMicArmiesEvent": ("linkMicArmies", _armies),
    "LiveEndEvent": ("streamEnd", _common),
    "LivePauseEvent": ("livePause", _common),
    "LiveUnpauseEvent": ("liveUnpause", _common),
}
"""What the relay forwards; other TikTokLive events are not meksd's business."""


def to_envelope(event: Any) -> dict[str, Any] | None:
    """The meksd envelope for a TikTokLive event (by its class name), or None."""
    entry = MAPPERS.get(type(event).__name__)
    if entry is None:
        return None
    name, mapper = entry
    data = {k: v for k, v in mapper(event).items() if v is not None}
    return {"event": name, "data": data}


async def main(unique_id: str, port: int) -> None:
    from TikTokLive import TikTokLiveClient
    from TikTokLive import events as tiktok_events
    from websockets.asyncio.server import broadcast, serve

    history: deque[str] = deque(maxlen=HISTORY)
    clients: set[Any] = set()

    async def feed(ws: Any) -> None:
        for text in list(history)[-REPLAY:]:
            await ws.send(text)
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async def forward(event: Any) -> None:
        envelope = to_envelope(event)
        if envelope is not None:
            text = json.dumps(envelope, ensure_ascii=False)
            history.append(text)
            broadcast(clients, text)  # a meksd that stops reading is dropped; it reconnects

    client = TikTokLiveClient(unique_id=f"@{unique_id.lstrip('@')}")
    for class_name in MAPPERS:
        event_class = getattr(tiktok_events, class_name, None)
        if event_class is not None:
            client.add_listener(event_class, forward)

    async with serve(feed, "127.0.0.1", port):
        print(
            f"relay for @{unique_id}: meksd connects to ws://127.0.0.1:{port}/feed", file=sys.stderr
        )
        delay = 5
        while True:
            try:
                await client.connect()  # returns when the LIVE ends or the connection drops
                delay = 5
            except Exception as exc:  # offline streamer, rate limit, network
                print(f"cannot connect ({exc!r}); retrying in {delay}s", file=sys.stderr)
                delay = min(delay * 2, 300)
            await asyncio.sleep(delay)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: python relay.py <tiktok-username> [port]", file=sys.stderr)
        sys.exit(64)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9002))
