"""Client messages from their decoded JSON: ``from_wire(obj) -> message | ProtocolError``.

Dashboards are untrusted: anything that is not a well-formed v1 message becomes a
:class:`~meksd.model.wire.ProtocolError` value with a code and a message saying what
was wrong and where; nothing here raises.

Also the encoding side of the handshake: :func:`choose_subprotocol` picks ``meks.v1``
or ``meks.v1.msgpack`` from what the client offers, and :func:`check_plain` holds a
value decoded from msgpack to what JSON could have said, before :func:`from_wire`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
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
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
"""The integers a JSON message can carry (orjson's range: int64 and uint64)."""

SUBPROTOCOL_JSON = "meks.v1"
SUBPROTOCOL_MSGPACK = "meks.v1.msgpack"
SUBPROTOCOLS = (SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK)
"""The WebSocket subprotocols a dashboard may ask for (``Sec-WebSocket-Protocol``)."""


def choose_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol to answer a handshake with: the first ``offered`` one we speak.

    ``None`` (no ``Sec-WebSocket-Protocol`` in the answer) when the client offered
    none of ours: it gets ``meks.v1`` JSON, as every client did before subprotocols.
    Names compare exactly (case-sensitive), as browsers compare them.
    """
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None


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


def _plain_problem(value: object) -> str | None:
    """What about one value JSON could not say (of a container: nothing)."""
    if value is None or type(value) in (str, bool, list, dict):
        return None
    if type(value) is int:
        return None if MIN_INT <= value <= MAX_INT else "expected an integer within 64 bits"
    if type(value) is float:
        return None if math.isfinite(value) else "expected a finite float"
    return "expected str, int, float, bool, nil, array or map"


def check_plain(
    obj: object, *, describe: Callable[[object], str] = lambda v: type(v).__name__
) -> ProtocolError | None:
    """Why ``obj`` holds something no JSON message could (``None``: nothing does).

    For the decoder of the other encoding (``meks.v1.msgpack``): a message must be
    made of what orjson gives — maps with string keys, arrays, strings, integers in
    ``[-2**63, 2**64)``, finite floats, booleans, null, exactly those types — so
    that everything after the decoder behaves as with JSON. ``describe`` names a
    foreign value in the error (``bin``, an ext type). Iterative: any depth, no
    recursion; time and memory linear in the size of ``obj``, which the message size
    limit bounds.
    """
    stack: list[object] = [obj]
    pop, push = stack.pop, stack.extend
    while stack:
        value = pop()
        if type(value) is str or value is None or type(value) is bool:
            continue
        if type(value) is int:
            if MIN_INT <= value <= MAX_INT:
                continue
        elif type(value) is list:
            push(value)
            continue
        elif type(value) is dict:
            if all(type(key) is str for key in value):
                push(value.values())
                continue
        elif type(value) is float and math.isfinite(value):
            continue
        return _bad(_locate(obj, describe))
    return None


def _locate(obj: object, describe: Callable[[object], str]) -> str:
    """The first thing in ``obj`` (in document order) JSON could not say, and where.

    Depth-first over iterators: memory grows with the depth of ``obj`` only.
    """
    path: list[str | int] = []
    """The keys of the containers being walked (``stack[i + 1]`` walks ``path[i]``)."""
    stack: list[Iterator[tuple[str | int, object]]] = [iter([("", obj)])]
    while stack:
        for key, value in stack[-1]:
            if type(value) is str or (type(value) is int and MIN_INT <= value <= MAX_INT):
                continue  # the common cases, quickly
            if not value and type(value) in (dict, list):
                continue  # nothing in it to find
            if type(value) is dict:
                for name in value:
                    if type(name) is not str:
                        where = _path([*path[1:], key] if path else [])
                        return f"expected string keys @ {where}, got {describe(name)}"
                path.append(key)
                stack.append(iter(value.items()))
                break
            if type(value) is list:
                path.append(key)
                stack.append(enumerate(value))
                break
            problem = _plain_problem(value)
            if problem is not None:
                where = _path([*path[1:], key] if path else [])
                if problem.startswith("expected str,"):
                    return f"{problem} @ {where}, got {describe(value)}"
                return f"{problem} @ {where}"
        else:
            stack.pop()
            if path:
                path.pop()
    return "expected a plain value @ message"  # not reached: check_plain found one


MAX_PATH_CHARS = 80


def _path(keys: list[str | int]) -> str:
    """``since.seq``, ``args.k[1]``, ``message[0]``; a long one keeps its end."""
    text = "message" if not keys or isinstance(keys[0], int) else ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text if len(text) <= MAX_PATH_CHARS else "…" + text[-MAX_PATH_CHARS:]
