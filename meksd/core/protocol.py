"""Client messages from their decoded JSON: ``from_wire(obj) -> message | ProtocolError``.

Dashboards are untrusted: anything that is not a well-formed v1 message becomes a
:class:`~meksd.model.wire.ProtocolError` value with a code and a message saying what
was wrong and where; nothing here raises.
"""

from __future__ import annotations

from typing import Any

from meksd.model.wire import (
    ClientMessage,
    Command,
    Hello,
    Ping,
    ProtocolError,
    Since,
    Subscribe,
    Unsubscribe,
)

MAX_ID_LEN = 128
MAX_ROOM_LEN = 64
MAX_TOKEN_LEN = 512
MAX_SEQ = 2**63 - 1


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


def _string(obj: dict[str, Any], key: str, limit: int) -> str | ProtocolError:
    value = obj.get(key)
    if not isinstance(value, str):
        return _bad(f"expected string @ {key}, got {_kind(value)}")
    if not value or len(value) > limit:
        return _bad(f"expected 1..{limit} characters @ {key}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def from_wire(obj: object) -> ClientMessage | ProtocolError:
    """The client message ``obj`` (decoded JSON) describes, or why it is not one."""
    if not isinstance(obj, dict):
        return _bad(f"expected object @ message, got {_kind(obj)}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return _bad(f"expected string @ type, got {_kind(kind)}")
    if kind == "ping":
        ping_id = obj.get("id")
        if ping_id is not None and not (
            (isinstance(ping_id, str) and len(ping_id) <= MAX_ID_LEN)
            or (
                isinstance(ping_id, int)
                and not isinstance(ping_id, bool)
                and abs(ping_id) <= MAX_SEQ
            )
        ):
            return _bad("expected short string or int @ id")
        return Ping(ping_id)
    if kind == "hello":
        token = obj.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_LEN):
            return _bad(f"expected string of at most {MAX_TOKEN_LEN} characters @ token")
        return Hello(token)
    if kind in ("subscribe", "unsubscribe"):
        room = _string(obj, "room", MAX_ROOM_LEN)
        if isinstance(room, ProtocolError):
            return room
        if kind == "unsubscribe":
            return Unsubscribe(room)
        since_obj = obj.get("since")
        if since_obj is None:
            return Subscribe(room)
        if not isinstance(since_obj, dict):
            return _bad(f"expected object @ since, got {_kind(since_obj)}")
        epoch = since_obj.get("epoch")
        seq = since_obj.get("seq")
        if not isinstance(epoch, str) or not epoch or len(epoch) > MAX_ID_LEN:
            return _bad("expected string @ since.epoch")
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            return _bad("expected non-negative int @ since.seq")
        return Subscribe(room, Since(epoch, seq))
    if kind == "command":
        cmd_id = _string(obj, "id", MAX_ID_LEN)
        if isinstance(cmd_id, ProtocolError):
            return cmd_id
        room = _string(obj, "room", MAX_ROOM_LEN)
        if isinstance(room, ProtocolError):
            return room
        action = _string(obj, "action", MAX_ID_LEN)
        if isinstance(action, ProtocolError):
            return action
        args = obj.get("args", {})
        if not isinstance(args, dict):
            return _bad(f"expected object @ args, got {_kind(args)}")
        return Command(cmd_id, room, action, args)
    return ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
