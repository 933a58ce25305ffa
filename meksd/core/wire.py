"""The JSON-ready shapes dashboards receive, and the reference client that applies them.

Everything here returns plain ``dict``/``list``/``str``/``int``/``None`` values (IDs
always strings), ready for any JSON or msgpack encoder; the shell encodes once per
room. The shapes (``docs/protocol.md`` is the contract):

``snapshot_message(state, seq)``::

    {"type": "snapshot", "room": str, "epoch": str, "seq": int, "state": {
        "leaderboard": [{"user_id", "unique_id", "nickname", "diamonds", "since"}, ...],
        "totals": {"diamonds", "gifts", "likes", "comments", "joins", "follows", "shares"},
        "viewers": int,
        "battle": null | {"battle_id", "status", "hosts": [{"user_id", "unique_id",
                   "nickname", "score"}], "supporters": {host_id: [{"user_id",
                   "unique_id", "nickname", "score"}]}, "started_wall_ms",
                   "duration_s", "winner"},
        "chat": [{"msg_id", "user_id", "unique_id", "nickname", "comment", "wall_ms",
                  "pinned", "hidden"}],
        "chat_limit": int,
        "live": "live" | "paused" | "ended"}}

``delta_message(room, epoch, seq, delta)``: ``{"type": "delta", "room", "epoch",
"seq"}`` plus only the keys that changed among ``leaderboard`` (changed rows),
``gifts`` (items: ``msg_id``, ``user_id``, ``unique_id``, ``nickname``, ``gift_id``,
``gift_name``, ``diamond_count``, ``repeat_count``, ``streak``, ``counted_diamonds``,
``wall_ms``), ``chat``, ``chat_updates`` (``{"msg_id", "pinned", "hidden"}`` of
messages already in the chat), ``totals``, ``viewers``, ``live``, ``battle``.

:func:`apply_delta` is what a dashboard does with a delta; for any events split
into any batches, applying every delta to the first snapshot's ``state`` gives the
last snapshot's ``state`` (``tests/test_wire.py`` checks it).
"""

from __future__ import annotations

from typing import Any

from meksd.core.ranking import ranked
from meksd.model.state import (
    Battle,
    ChatItem,
    ChatUpdate,
    Delta,
    GiftItem,
    LeaderRow,
    Reply,
    RoomState,
    Totals,
)

__all__ = [
    "apply_delta",
    "battle_to_wire",
    "chat_item_to_wire",
    "chat_update_to_wire",
    "delta_message",
    "gift_item_to_wire",
    "leader_row_to_wire",
    "ranked",
    "reply_to_wire",
    "snapshot_message",
    "state_to_wire",
    "totals_to_wire",
]

JSONDict = dict[str, Any]


def leader_row_to_wire(row: LeaderRow) -> JSONDict:
    """One leaderboard row."""
    return {
        "user_id": row.user_id,
        "unique_id": row.unique_id,
        "nickname": row.nickname,
        "diamonds": row.diamonds,
        "since": row.since,
    }


def totals_to_wire(totals: Totals) -> JSONDict:
    """The session counters."""
    return {
        "diamonds": totals.diamonds,
        "gifts": totals.gifts,
        "likes": totals.likes,
        "comments": totals.comments,
        "joins": totals.joins,
        "follows": totals.follows,
        "shares": totals.shares,
    }


def battle_to_wire(battle: Battle | None) -> JSONDict | None:
    """The current or last battle, or None."""
    if battle is None:
        return None
    return {
        "battle_id": battle.battle_id,
        "status": battle.status,
        "hosts": [
            {
                "user_id": host.user_id,
                "unique_id": host.unique_id,
                "nickname": host.nickname,
                "score": host.score,
            }
            for host in battle.hosts
        ],
        "supporters": {
            host_id: [
                {
                    "user_id": s.user_id,
                    "unique_id": s.unique_id,
                    "nickname": s.nickname,
                    "score": s.score,
                }
                for s in supporters
            ]
            for host_id, supporters in battle.supporters
        },
        "started_wall_ms": battle.started_wall_ms,
        "duration_s": battle.duration_s,
        "winner": battle.winner,
    }


def chat_item_to_wire(item: ChatItem) -> JSONDict:
    """One chat message."""
    return {
        "msg_id": item.msg_id,
        "user_id": item.user_id,
        "unique_id": item.unique_id,
        "nickname": item.nickname,
        "comment": item.comment,
        "wall_ms": item.wall_ms,
        "pinned": item.pinned,
        "hidden": item.hidden,
    }


def chat_update_to_wire(update: ChatUpdate) -> JSONDict:
    """New flags of a message already in the chat."""
    return {"msg_id": update.msg_id, "pinned": update.pinned, "hidden": update.hidden}


def gift_item_to_wire(item: GiftItem) -> JSONDict:
    """One gift item of a delta."""
    return {
        "msg_id": item.msg_id,
        "user_id": item.user_id,
        "unique_id": item.unique_id,
        "nickname": item.nickname,
        "gift_id": item.gift_id,
        "gift_name": item.gift_name,
        "diamond_count": item.diamond_count,
        "repeat_count": item.repeat_count,
        "streak": item.streak,
        "counted_diamonds": item.counted_diamonds,
        "wall_ms": item.wall_ms,
    }


def state_to_wire(state: RoomState) -> JSONDict:
    """The ``state`` of a snapshot message. O(n log n) in leaderboard rows."""
    return {
        "leaderboard": [leader_row_to_wire(row) for row in ranked(state)],
        "totals": totals_to_wire(state.totals),
        "viewers": state.viewers,
        "battle": battle_to_wire(state.battle),
        "chat": [chat_item_to_wire(item) for item in state.chat],
        "chat_limit": state.config.chat_history,
        "live": state.live,
        **({"replies": [reply_to_wire(r) for r in state.replies]} if state.replies else {}),
    }


def reply_to_wire(reply: Reply) -> JSONDict:
    """An operator reply: ``{reply_id, text, status, error?}``."""
    out: JSONDict = {"reply_id": reply.reply_id, "text": reply.text, "status": reply.status}
    if reply.error is not None:
        out["error"] = reply.error
    return out


def snapshot_message(state: RoomState, seq: int) -> JSONDict:
    """The full state of a room, as sent on subscribe, resume miss and lag."""
    return {
        "type": "snapshot",
        "room": state.room_id,
        "epoch": state.epoch,
        "seq": seq,
        "state": state_to_wire(state),
    }


def delta_message(room: str, epoch: str, seq: int, delta: Delta) -> JSONDict:
    """A delta message with only the keys that changed."""
    message: JSONDict = {"type": "delta", "room": room, "epoch": epoch, "seq": seq}
    if delta.leaderboard:
        message["leaderboard"] = [leader_row_to_wire(row) for row in delta.leaderboard]
    if delta.gifts:
        message["gifts"] = [gift_item_to_wire(item) for item in delta.gifts]
    if delta.chat:
        message["chat"] = [chat_item_to_wire(item) for item in delta.chat]
    if delta.chat_updates:
        message["chat_updates"] = [chat_update_to_wire(u) for u in delta.chat_updates]
    if delta.totals is not None:
        message["totals"] = totals_to_wire(delta.totals)
    if delta.viewers is not None:
        message["viewers"] = delta.viewers
    if delta.live is not None:
        message["live"] = delta.live
    if delta.battle_changed:
        message["battle"] = battle_to_wire(delta.battle)
    if delta.replies:
        message["replies"] = [reply_to_wire(r) for r in delta.replies]
    return message


def apply_delta(view: JSONDict, delta_msg: JSONDict) -> JSONDict:
    """The reference client: ``view`` (a snapshot's ``state``) after ``delta_msg``.

    Pure: returns a new dict and leaves both arguments alone. Leaderboard rows are
    upserted by ``user_id`` and re-sorted (diamonds descending, then ``since``);
    ``chat_updates`` set the flags of the messages they name, then chat items are
    appended, then the chat is trimmed to the last ``view["chat_limit"]`` messages
    plus the older pinned ones (:func:`meksd.core.chat.trim_ring`); ``totals``,
    ``viewers``, ``live`` and ``battle`` are replaced when present. ``gifts`` items
    are events to show, not state, and leave the view unchanged.
    """
    new = dict(view)
    rows = delta_msg.get("leaderboard")
    if rows:
        by_user = {row["user_id"]: row for row in view["leaderboard"]}
        for row in rows:
            by_user[row["user_id"]] = row
        new["leaderboard"] = sorted(
            by_user.values(), key=lambda r: (-r["diamonds"], r["since"], r["user_id"])
        )
    chat = delta_msg.get("chat")
    updates = delta_msg.get("chat_updates")
    if chat or updates:
        items = view["chat"]
        if updates:
            flags = {u["msg_id"]: {"pinned": u["pinned"], "hidden": u["hidden"]} for u in updates}
            items = [
                {**item, **flags[item["msg_id"]]} if item["msg_id"] in flags else item
                for item in items
            ]
        if chat:
            items = [*items, *chat]
        limit = view["chat_limit"]
        start = len(items) - limit
        new["chat"] = (
            [item for i, item in enumerate(items) if i >= start or item.get("pinned")]
            if limit > 0
            else []
        )
    for key in ("totals", "viewers", "live", "battle"):
        if key in delta_msg:
            new[key] = delta_msg[key]
    replies = delta_msg.get("replies")
    if replies:  # upsert by reply_id; keep the pending ones and the last chat_limit
        by_id = {r["reply_id"]: r for r in view.get("replies", [])}
        for reply in replies:
            by_id[reply["reply_id"]] = reply
        kept = list(by_id.values())
        start = len(kept) - view["chat_limit"]
        new["replies"] = [r for i, r in enumerate(kept) if i >= start or r["status"] == "pending"]
    return new
