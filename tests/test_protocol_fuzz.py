"""Fuzzing what dashboards send: the parser alone, then the whole reader of a running app.

The first half drives :func:`meksd.core.protocol.from_wire` with any decoded JSON.
The second sends generated frames (any JSON, truncated JSON, wrong types, huge
numbers, deep nesting, invalid UTF-8, binary frames, broken framing) to an App over
a real socket, then checks the daemon: no handler failed, the connection either
still answers or was closed with the code the bad input calls for, and a
well-behaved dashboard still gets its snapshot.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meksd.core.protocol import MAX_ID_LEN, MAX_ROOM_LEN, from_wire
from meksd.model.wire import (
    Command,
    Hello,
    Ping,
    ProtocolError,
    Since,
    Subscribe,
    Unsubscribe,
)
from tests.rawws import BINARY, CLOSE, PING, TEXT, RawClosed, open_raw
from tests.secsupport import make_config, running_app, wait_until
from tests.strategies import PROPERTY, json_values

TYPES = ("hello", "subscribe", "unsubscribe", "ping", "command", "pong", "", "SUBSCRIBE")
FIELDS = ("type", "room", "since", "id", "token", "action", "args")

huge_ints = st.one_of(
    st.integers(min_value=2**63 - 3, max_value=2**63 + 3),
    st.integers(min_value=-(10**40), max_value=10**40),
)
field_values = st.one_of(
    json_values,
    huge_ints,
    st.text(min_size=60, max_size=200),
    st.fixed_dictionaries(
        {
            "epoch": st.one_of(st.text(max_size=10), json_values),
            "seq": st.one_of(huge_ints, json_values),
        }
    ),
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(TYPES)},
        optional={name: field_values for name in FIELDS if name != "type"},
    ),
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6),
)


# -- the parser ----------------------------------------------------------------------


@PROPERTY
@given(messages)
def test_from_wire_never_raises(obj: Any) -> None:
    """Any decoded JSON gives a client message or a ProtocolError with a known code."""
    result = from_wire(obj)
    if isinstance(result, ProtocolError):
        assert result.code in ("bad_request", "unknown_type")
        assert result.message and len(result.message) < 300
    else:
        assert isinstance(result, Hello | Subscribe | Unsubscribe | Ping | Command)


@PROPERTY
@given(st.integers(min_value=0, max_value=3000), st.sampled_from(["args", "since", "room"]))
def test_from_wire_takes_deep_nesting_without_recursing(depth: int, key: str) -> None:
    """Deeply nested values in any field are refused or passed on as data, never recursed into."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    base = {"type": "command", "id": "c", "room": "r", "action": "x"}
    result = from_wire({**base, key: value})
    assert isinstance(result, ProtocolError | Command)


valid_ids = st.text(alphabet="abcxyz019-_.", min_size=1, max_size=MAX_ID_LEN)
valid_rooms = st.text(alphabet="abcxyz019-_.", min_size=1, max_size=MAX_ROOM_LEN)


@PROPERTY
@given(
    st.one_of(
        st.builds(
            Subscribe,
            valid_rooms,
            st.none() | st.builds(Since, valid_ids, st.integers(0, 2**63 - 1)),
        ),
        st.builds(Unsubscribe, valid_rooms),
        st.builds(Ping, st.none() | valid_ids | st.integers(-(2**63) + 1, 2**63 - 1)),
        st.builds(Hello, st.none() | st.text(max_size=512)),
        st.builds(
            Command,
            valid_ids,
            valid_rooms,
            valid_ids,
            st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1), max_size=3),
        ),
    )
)
def test_valid_messages_round_trip(msg: Any) -> None:
    """Every well-formed v1 message, sent as JSON, parses back to itself."""
    wire: dict[str, Any] = {"type": type(msg).__name__.lower(), **attrs.asdict(msg, recurse=True)}
    wire = {k: v for k, v in wire.items() if v is not None}
    assert from_wire(orjson.loads(orjson.dumps(wire))) == msg


# -- the reader of a running app ----------------------------------------------------

# What each generated frame is, and whether the server must close for it:
# ``close`` is the set of acceptable close codes, empty if the connection must live.
LIVE: frozenset[int | None] = frozenset()
BROKEN: frozenset[int | None] = frozenset({1002, 1007, None})
HELLO_TOKEN: frozenset[int | None] = frozenset({1008})
"""A ``hello`` with a (wrong) token: closed with 1008 when tokens are configured."""
"""A frame that breaks RFC 6455 (invalid UTF-8 in text, reserved opcode, bad
fragmentation): the connection ends with wsproto's 1002 or 1007 close frame, or the
TCP close when it comes first (docs/security.md)."""


def dumps(doc: Any) -> bytes:
    """JSON bytes of any generated value (stdlib json: integers of any size)."""
    return json.dumps(doc, ensure_ascii=False).encode()


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes, frozenset[int | None], bool]:
    """(opcode, payload, close codes it may cause, fin)."""
    opcode, payload, codes, fin = draw(_frames())
    try:  # trio-websocket measures text messages in characters
        size = len(payload.decode()) if opcode == TEXT else len(payload)
    except UnicodeDecodeError:
        size = len(payload)
    if size > FUZZ_MAX_BYTES:
        codes = codes | {1009}
    return opcode, payload, codes, fin


@st.composite
def _frames(draw: st.DrawFn) -> tuple[int, bytes, frozenset[int | None], bool]:
    kind = draw(
        st.sampled_from(
            [
                "json",
                "json",
                "message",
                "message",
                "truncated",
                "deep",
                "bignum",
                "utf8",
                "binary",
                "protocol",
                "big",
            ]
        )
    )
    if kind == "json":
        return TEXT, dumps(draw(json_values)), LIVE, True
    if kind == "message":
        msg = draw(messages)
        if (
            isinstance(msg, dict)
            and msg.get("type") == "hello"
            and isinstance(msg.get("token"), str)
        ):
            return TEXT, dumps(msg), HELLO_TOKEN, True  # a wrong token: 1008 in token mode
        return TEXT, dumps(msg), LIVE, True
    if kind == "truncated":
        text = json.dumps(draw(messages), ensure_ascii=False)
        cut = draw(st.integers(0, max(0, len(text) - 1)))
        return TEXT, text[:cut].encode(), LIVE, True  # cut between characters
    if kind == "deep":
        n = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = b"1" if opener == b'{"a":' else b""
        return TEXT, opener * n + inner + closer * n, LIVE, True
    if kind == "bignum":
        digits = draw(st.integers(20, 5000))
        field = draw(st.sampled_from(["id", "since", "seq"]))
        number = b"9" * digits
        if field == "since":
            body = b'{"type":"subscribe","room":"a","since":{"epoch":"e","seq":' + number + b"}}"
        elif field == "seq":
            body = b'{"type":"ping","id":-' + number + b".5e99999}"
        else:
            body = b'{"type":"ping","id":' + number + b"}"
        return TEXT, body, LIVE, True
    if kind == "utf8":
        good = dumps(draw(messages))
        at = draw(st.integers(0, len(good)))
        bad = draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])
        )
        return TEXT, good[:at] + bad + good[at:], BROKEN, True
    if kind == "binary":
        return BINARY, draw(st.binary(max_size=200)), LIVE, True
    if kind == "big":
        return TEXT, b'"' + b"x" * 5000 + b'"', frozenset({1009}), True
    # broken framing: reserved opcodes, a control frame that claims to be fragmented,
    # a data frame left unfinished then a new one
    opcode, fin = draw(st.sampled_from([(0x3, True), (0xB, True), (PING, False), (TEXT, False)]))
    return opcode, b"x", BROKEN, fin


FUZZ_MAX_BYTES = 4096
FUZZ_SERVER = (
    f"max_message_bytes = {FUZZ_MAX_BYTES}\nmax_messages_per_s = 1e3\nmessage_burst = 1000"
)


@settings(max_examples=40, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=6), st.booleans())
async def test_reader_survives_hostile_frames(
    batch: list[tuple[int, bytes, frozenset[int | None], bool]], tokens: bool
) -> None:
    """Hostile frames get errors or the close code they call for; no handler fails; others are served."""
    config = make_config(tokens=tokens, server=FUZZ_SERVER)
    with trio.fail_after(20):
        async with running_app(config) as app:
            port = app.dashboards.port
            allowed: set[int | None] = set()
            closed: int | bool | None = False
            async with open_raw(port) as raw:
                assert await raw.handshake(port) == 101
                welcome = await raw.recv_json()
                assert isinstance(welcome, dict) and welcome["type"] == "welcome"
                try:
                    for opcode, payload, codes, fin in batch:
                        if codes is HELLO_TOKEN and not tokens:
                            codes = LIVE  # open mode: a hello's token is not checked
                        allowed |= codes
                        await raw.send_frame(opcode, payload, fin=fin)
                        if not fin and opcode == TEXT:
                            await raw.send_frame(TEXT, b"{}")  # a new message mid-fragment
                    await raw.send_frame(TEXT, b'{"type": "ping", "id": "end"}')
                    while True:
                        reply = await raw.recv_json()
                        assert isinstance(reply, dict) and reply.get("type") in (
                            "error",
                            "pong",
                            "ack",
                            "welcome",
                            "snapshot",
                            "delta",
                            "lagged",
                        ), reply
                        if reply == {"type": "pong", "id": "end"}:
                            break
                except RawClosed as exc:
                    closed = exc.code
                except trio.BrokenResourceError:
                    closed = None
            if closed is not False:
                assert closed in allowed, f"closed with {closed}, expected one of {allowed}"
                await raw_close_done(app)
            else:
                assert not allowed, "bad input that must close the connection was accepted"
            # the daemon is intact: no handler failed, and a good dashboard is served
            assert app.dashboards.totals.errors == 0
            async with open_raw(port) as good:
                headers = [("Authorization", "Bearer meks_test-viewer-of-all")] if tokens else []
                assert await good.handshake(port, headers=headers) == 101
                await good.recv_json()
                await good.send_text('{"type": "subscribe", "room": "b"}')
                snapshot = await good.recv_json()
                assert isinstance(snapshot, dict) and snapshot["type"] == "snapshot"
                await good.send_frame(CLOSE, b"\x03\xe8")
            await wait_until(lambda: not app.dashboards.dashboards)
            assert app.dashboards.totals.errors == 0


async def raw_close_done(app: Any) -> None:
    """The closed fuzz connection is gone from the server."""
    await wait_until(lambda: not app.dashboards.dashboards)
