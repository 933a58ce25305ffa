"""The second encoding of ``meks.v1``: msgpack in binary frames (``meks.v1.msgpack``).

A dashboard that offers the ``meks.v1.msgpack`` subprotocol gets the same messages
as a JSON dashboard, each encoded with msgpack in one binary frame
(``docs/protocol.md``). The JSON body the actor encodes stays the source of truth: a
delta's msgpack body is transcoded from it (:func:`json_to_msgpack`), so the two can
never say different things, and the room's feed does that at most once per delta,
only when a msgpack dashboard needs it — a room without one pays nothing for msgpack.

What a msgpack client sends is decoded by :func:`from_msgpack` into exactly the
values JSON could have given; anything else (bytes that are not msgpack, ext types,
timestamps, ``bin``, non-string map keys, non-finite floats, nesting deeper than
1024) is a :class:`~meksd.model.wire.ProtocolError` value, never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import msgpack  # type: ignore[import-untyped]
import orjson

from meksd.core.protocol import check_plain
from meksd.model.wire import ProtocolError

MAX_DEPTH = 1024
"""Nesting the msgpack unpacker takes (its fixed stack), the same as orjson's limit."""


def json_to_msgpack(body: bytes) -> bytes:
    """The msgpack encoding of the message whose JSON encoding is ``body``."""
    out: bytes = msgpack.packb(orjson.loads(body))
    return out


def to_msgpack(message: object) -> bytes:
    """One message (plain dicts, lists, str, int, float, bool, None) as msgpack."""
    out: bytes = msgpack.packb(message)
    return out


def msgpack_array(bodies: Sequence[bytes]) -> bytes:
    """A msgpack array of already-encoded values, without re-encoding them."""
    n = len(bodies)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 65536:
        head = struct.pack("!BH", 0xDC, n)
    else:
        head = struct.pack("!BI", 0xDD, n)
    return head + b"".join(bodies)


def _why(exc: Exception) -> str:
    if isinstance(exc, msgpack.StackError):
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(exc, msgpack.ExtraData):
        return "bytes left after the first value (one message per frame)"
    if isinstance(exc, UnicodeDecodeError):
        return "a str that is not UTF-8"
    if isinstance(exc, msgpack.FormatError):
        return "a byte that starts no msgpack value"
    if "incomplete input" in str(exc):
        return "it ends inside a value"
    if "exceeds max_" in str(exc):  # "N exceeds max_array_len(M)", checked before allocating
        return f"a length of {str(exc).split(' ', 1)[0]}, more than the message holds"
    text = str(exc)
    return text or type(exc).__name__


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return "bin (send text as str)"
    if isinstance(value, msgpack.Timestamp):
        return "timestamp (ext type -1)"
    if isinstance(value, msgpack.ExtType):
        return f"ext type {value.code}"
    return type(value).__name__


def from_msgpack(data: bytes) -> object | ProtocolError:
    """The value a client's binary frame holds, or why it cannot be a message.

    Never raises. ``bad_msgpack`` when ``data`` is not one msgpack value;
    ``bad_request`` when it is one but holds what JSON could not (the message says
    what and where, e.g. ``expected str, int, float, bool, nil, array or map @
    room, got bin (send text as str)``). The unpacker's own limits hold: no length
    beyond ``len(data)``, map keys only str or bin, at most 1024 levels.
    """
    try:
        value: object = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # every way msgpack can refuse bytes: untrusted input
        text = str(exc)
        if isinstance(exc, ValueError) and "not allowed for map key" in text:
            # Valid msgpack, but not a message: the unpacker refuses such keys itself.
            kind = text.split(" ", 1)[0]
            kind = {"dict": "map", "list": "array", "NoneType": "nil"}.get(kind, kind)
            return ProtocolError("bad_request", f"expected string keys, got {kind}"[:200])
        return ProtocolError("bad_msgpack", f"message is not msgpack: {_why(exc)}"[:200])
    problem = check_plain(value, describe=_describe)
    return value if problem is None else problem
