"""The ``meks.v1.msgpack`` subprotocol: negotiation, same messages, hostile input, bytes.

Pure parts first (the subprotocol choice, the plain-value check, the decoder, the
hub's encodings with fake subscribers), then a running app over real sockets on
127.0.0.1: negotiation in every order, client messages in both encodings, hostile
msgpack, catch-up arrays and lagged + snapshot, and a burst to JSON and msgpack
dashboards of one room that must end equal to the server, decoding to the same
messages.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack
import orjson
import pytest
import trio
import trio.testing
from hypothesis import assume, given
from hypothesis import strategies as st

from meksd.config import parse_config
from meksd.core.protocol import (
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    check_plain,
    choose_subprotocol,
    from_wire,
)
from meksd.core.reduce import new_room
from meksd.core.wire import snapshot_message
from meksd.model.state import RoomConfig
from meksd.model.wire import ProtocolError
from meksd.runtime.app import App
from meksd.runtime.codec import from_msgpack, json_to_msgpack, msgpack_array
from meksd.runtime.hub import RoomFeed
from tests.rawws import BINARY, TEXT, RawClosed, open_raw
from tests.secsupport import inject, make_config, running_app, wait_until
from tests.strategies import PROPERTY, json_values
from tests.support import MSGPACK, DashClient, RoomView, open_dashboard, serve_feed
from tests.test_e2e import CONFIG as E2E_CONFIG
from tests.test_e2e import make_feed
from tests.test_protocol_fuzz import messages

# -- choosing the subprotocol --------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([], None),
        (["graphql-ws"], None),
        (["meks.v1"], "meks.v1"),
        (["meks.v1.msgpack"], "meks.v1.msgpack"),
        (["meks.v1", "meks.v1.msgpack"], "meks.v1"),
        (["meks.v1.msgpack", "meks.v1"], "meks.v1.msgpack"),
        (["graphql-ws", "meks.v1.msgpack", "meks.v1"], "meks.v1.msgpack"),
        (["MEKS.V1.MSGPACK"], None),
        (["meks.v2"], None),
    ],
)
def test_choose_subprotocol_takes_the_clients_first_supported(
    offered: list[str], chosen: str | None
) -> None:
    """The first subprotocol the client lists that meksd speaks; none of ours: no subprotocol."""
    assert choose_subprotocol(offered) == chosen


# -- decoding what a msgpack client sends ----------------------------------------------


@PROPERTY
@given(json_values)
def test_every_json_value_is_plain(value: Any) -> None:
    """Whatever JSON can say passes the plain-value check, and comes through msgpack unchanged."""
    try:
        as_json = orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError:
        assume(False)  # integers beyond 64 bits: orjson cannot carry them (nor msgpack)
        return
    assert check_plain(as_json) is None
    assert from_msgpack(msgpack.packb(value)) == as_json


@PROPERTY
@given(messages)
def test_msgpack_and_json_give_the_same_answer(obj: Any) -> None:
    """A message sent as msgpack parses to what the same message sent as JSON parses to."""
    try:
        as_json = orjson.loads(orjson.dumps(obj))
        as_msgpack = msgpack.packb(obj)
    except (TypeError, OverflowError, orjson.JSONEncodeError):
        assume(False)  # integers beyond 64 bits: neither encoding can carry them
        return
    decoded = from_msgpack(as_msgpack)
    assert not isinstance(decoded, ProtocolError)
    assert from_wire(decoded) == from_wire(as_json)


def _deep(n: int) -> bytes:
    return b"\x91" * n + b"\x01"


HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("reserved byte", b"\xc1", "bad_msgpack", "starts no msgpack value"),
    ("truncated", b"\x82\xa4type", "bad_msgpack", "ends inside a value"),
    ("empty", b"", "bad_msgpack", "ends inside a value"),
    ("two values", msgpack.packb({"type": "ping"}) + b"\x00", "bad_msgpack", "bytes left"),
    ("str not UTF-8", b"\x81\xa4type\xa2\xff\xfe", "bad_msgpack", "not UTF-8"),
    ("too deep", _deep(1100), "bad_msgpack", "nested deeper than 1024"),
    ("huge array header", b"\xdd\xff\xff\xff\xff", "bad_msgpack", "a length of 4294967295"),
    ("huge str header", b"\xdb\xff\xff\xff\xff", "bad_msgpack", "ends inside a value"),
    ("huge map header", b"\xdf\xff\xff\xff\xff", "bad_msgpack", "a length of 4294967295"),
    (
        "bin room",
        msgpack.packb({"type": "subscribe", "room": b"a"}),
        "bad_request",
        "@ room, got bin",
    ),
    (
        "bin token",
        msgpack.packb({"type": "hello", "token": b"secret"}),
        "bad_request",
        "@ token, got bin",
    ),
    (
        "bin deep in args",
        msgpack.packb(
            {"type": "command", "id": "c", "room": "a", "action": "x", "args": {"k": [1, b"b"]}}
        ),
        "bad_request",
        "@ args.k[1], got bin",
    ),
    (
        "ext type",
        msgpack.packb({"type": "ping", "id": msgpack.ExtType(7, b"\x00" * 16)}),
        "bad_request",
        "@ id, got ext type 7",
    ),
    (
        "timestamp",
        msgpack.packb({"type": "ping", "id": msgpack.Timestamp(1, 0)}),
        "bad_request",
        "got timestamp",
    ),
    ("bin key", msgpack.packb({b"type": "ping"}), "bad_request", "string keys @ message"),
    ("int key", b"\x81\x01\xa1x", "bad_request", "string keys, got int"),
    ("map key", b"\x81\x80\xa1x", "bad_request", "string keys, got map"),
    ("NaN", msgpack.packb({"type": "ping", "id": math.nan}), "bad_request", "finite float @ id"),
    ("inf", msgpack.packb({"type": "ping", "id": -math.inf}), "bad_request", "finite float @ id"),
    (
        "uint64 seq",
        msgpack.packb(
            {"type": "subscribe", "room": "a", "since": {"epoch": "e", "seq": 2**64 - 1}}
        ),
        "bad_request",
        "non-negative int @ since.seq",
    ),
    (
        "int64 min id",
        msgpack.packb({"type": "ping", "id": -(2**63)}),
        "bad_request",
        "short string or int @ id",
    ),
    ("array", msgpack.packb([1, 2]), "bad_request", "expected object @ message, got array"),
    ("deep but allowed", _deep(1000), "bad_request", "expected object @ message"),
    ("unknown type", msgpack.packb({"type": "teleport"}), "unknown_type", "teleport"),
]


@pytest.mark.parametrize(
    ("payload", "code", "says"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_msgpack_is_a_clear_error_value(payload: bytes, code: str, says: str) -> None:
    """Bytes that are not msgpack, or msgpack JSON could not say, give a ProtocolError naming why and where."""
    decoded = from_msgpack(payload)
    result = decoded if isinstance(decoded, ProtocolError) else from_wire(decoded)
    assert isinstance(result, ProtocolError)
    assert result.code == code
    assert says in result.message, result.message
    assert len(result.message) <= 200


def test_check_plain_names_the_place_deep_down_in_short() -> None:
    """A foreign value under 1000 levels and many siblings is found; the path keeps its end, cut short."""
    value: Any = [*([1] * 5000), {"k": [b"x"]}]
    for _ in range(1000):
        value = {"a": value}
    problem = check_plain(value, describe=lambda v: "bin")
    assert isinstance(problem, ProtocolError) and problem.code == "bad_request"
    assert problem.message.endswith(".a[5000].k[0], got bin")
    assert len(problem.message) < 160
    assert check_plain({"a": [1, 2**64]}) == ProtocolError(
        "bad_request", "expected an integer within 64 bits @ a[1]"
    )
    assert check_plain([(1, 2)]) == ProtocolError(
        "bad_request", "expected str, int, float, bool, nil, array or map @ message[0], got tuple"
    )


@PROPERTY
@given(st.binary(max_size=300))
def test_from_msgpack_never_raises(data: bytes) -> None:
    """Any bytes give a plain value or a ProtocolError, never an exception."""
    decoded = from_msgpack(data)
    if isinstance(decoded, ProtocolError):
        assert decoded.code in ("bad_msgpack", "bad_request")
    else:
        assert check_plain(decoded) is None
        from_wire(decoded)


# -- the hub's two encodings -----------------------------------------------------------


class FakeSub:
    """A live subscriber that takes every frame (or, ``takes=False``, none)."""

    def __init__(self, *, msgpack: bool, takes: bool = True) -> None:
        self.msgpack = msgpack
        self.takes = takes
        self.frames: list[tuple[int, bytes]] = []

    def deliver(self, seq: int, frame: bytes, size: int) -> bool:
        if self.takes:
            self.frames.append((seq, frame))
        return self.takes

    def unlive(self) -> None:
        pass


def _delta_body(room: str, epoch: str, seq: int) -> bytes:
    return orjson.dumps(
        {
            "type": "delta",
            "room": room,
            "epoch": epoch,
            "seq": seq,
            "gifts": [
                {
                    "msg_id": f"g{seq}",
                    "user_id": "7001",
                    "nickname": "Rosa ✿",
                    "diamond_count": 1,
                    "repeat_count": seq,
                    "wall_ms": 1763729001000 + seq,
                }
            ],
            "totals": {"diamonds": 9100 + seq, "likes": 2**40, "ratio": 0.25},
            "battle": None,
        }
    )


def _payload(frame: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one unmasked server frame."""
    n = frame[1] & 0x7F
    start = 2 if n < 126 else 4 if n == 126 else 10
    return frame[0] & 0x0F, frame[start:]


def test_feed_encodes_msgpack_once_per_delta_and_only_when_needed() -> None:
    """JSON-only rooms never encode msgpack; with msgpack subscribers each delta is transcoded once, one frame for all."""
    state = new_room("r", "e1", RoomConfig())
    feed = RoomFeed(state, 0, ring_size=8)
    json_subs = [FakeSub(msgpack=False) for _ in range(3)]
    for sub in json_subs:
        feed.join(sub)
    for seq in (1, 2, 3):
        feed.publish(seq, _delta_body("r", "e1", seq), state, 0.0)
    assert feed.statistics().msgpack_encoded == 0, "no msgpack dashboard: no msgpack work"

    mp_subs = [FakeSub(msgpack=True) for _ in range(4)]
    for sub in mp_subs:
        feed.join(sub)
    for seq in (4, 5, 6):
        feed.publish(seq, _delta_body("r", "e1", seq), state, 0.0)
    assert feed.statistics().msgpack_encoded == 3, "one transcoding per delta, not per dashboard"
    for seq in (4, 5, 6):
        frames = [dict(sub.frames)[seq] for sub in mp_subs]
        assert all(frame is frames[0] for frame in frames), "one frame object for every dashboard"
        opcode, payload = _payload(frames[0])
        json_opcode, json_payload = _payload(dict(json_subs[0].frames)[seq])
        assert (opcode, json_opcode) == (BINARY, TEXT)
        assert msgpack.unpackb(payload) == orjson.loads(json_payload)
        assert len(payload) < len(json_payload)

    # Catch-up from the ring: 1..3 are transcoded now (once), 4..6 reuse their bodies.
    last, body = feed.deltas_after(0, limit=256, msgpack=True)
    _, json_body = feed.deltas_after(0, limit=256)
    assert last == 6
    assert body[0] == 0x96  # a msgpack array of 6
    assert msgpack.unpackb(body) == orjson.loads(json_body)
    assert [d["seq"] for d in msgpack.unpackb(body)] == [1, 2, 3, 4, 5, 6]
    feed.deltas_after(0, limit=256, msgpack=True)
    assert feed.statistics().msgpack_encoded == 6
    one_last, one = feed.deltas_after(5, limit=256, msgpack=True)
    assert one_last == 6 and msgpack.unpackb(one)["seq"] == 6, "one delta: a map, not an array"

    # A slot reused by a newer delta gets that delta's msgpack body, not the old one.
    for seq in range(7, 15):
        feed.publish(seq, _delta_body("r", "e1", seq), state, 0.0)
    _, body = feed.deltas_after(feed.first_seq - 1, limit=256, msgpack=True)
    assert [d["seq"] for d in msgpack.unpackb(body)] == list(range(feed.first_seq, 15))


def test_snapshots_are_encoded_once_per_seq_per_format() -> None:
    """The msgpack snapshot is the JSON snapshot's message, encoded once per seq however often asked."""
    state = new_room("r", "e1", RoomConfig())
    feed = RoomFeed(state, 0, ring_size=8)
    for _ in range(3):
        seq, body = feed.snapshot(msgpack=True)
    _, json_body = feed.snapshot()
    assert seq == 0
    assert msgpack.unpackb(body) == orjson.loads(json_body) == snapshot_message(state, 0)
    stats = feed.statistics()
    assert (stats.snapshots_encoded, stats.msgpack_snapshots_encoded) == (1, 1)
    feed.publish(1, _delta_body("r", "e1", 1), state, 0.0)
    feed.snapshot(msgpack=True)
    feed.snapshot(msgpack=True)
    assert feed.statistics().msgpack_snapshots_encoded == 2


@pytest.mark.parametrize("n", [1, 15, 16, 300, 70000])
def test_msgpack_array_header_for_any_count(n: int) -> None:
    """Joined bodies with the array header of their count decode as that array."""
    bodies = [msgpack.packb(i) for i in range(n)]
    assert msgpack.unpackb(msgpack_array(bodies)) == list(range(n))


def test_transcoding_keeps_every_json_value() -> None:
    """JSON → msgpack keeps unicode, big and negative ints, floats, null, nesting exactly."""
    message = {
        "s": "Rosa ✿ 🌹",
        "i": [0, -1, 2**63 - 1, 2**64 - 1, -(2**63)],
        "f": [0.1, -2.5e-300, 1e300],
        "n": None,
        "b": [True, False],
        "d": {"": {"x": []}},
    }
    assert msgpack.unpackb(json_to_msgpack(orjson.dumps(message))) == message


# -- over real sockets -----------------------------------------------------------------


def _protocol_header(offered: list[str] | None) -> list[tuple[str, str]]:
    return [] if offered is None else [("Sec-WebSocket-Protocol", ", ".join(offered))]


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (None, None),
        (["meks.v1.msgpack"], "meks.v1.msgpack"),
        (["meks.v1"], "meks.v1"),
        (["meks.v1", "meks.v1.msgpack"], "meks.v1"),
        (["meks.v1.msgpack", "meks.v1"], "meks.v1.msgpack"),
        (["graphql-ws"], None),
    ],
)
async def test_negotiation_over_the_wire(offered: list[str] | None, chosen: str | None) -> None:
    """The handshake answers with the chosen subprotocol (or none), and every message follows it."""
    with trio.fail_after(10):
        async with running_app(make_config(tokens=False)) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(offered)) == 101
                assert raw.headers.get("sec-websocket-protocol") == chosen
                opcode, payload = await raw.recv_frame()
                if chosen == SUBPROTOCOL_MSGPACK:
                    assert opcode == BINARY
                    welcome = msgpack.unpackb(payload)
                    await raw.send_msgpack({"type": "subscribe", "room": "a"})
                    snapshot = await raw.recv_msgpack()
                else:
                    assert opcode == TEXT
                    welcome = orjson.loads(payload)
                    await raw.send_text('{"type": "subscribe", "room": "a"}')
                    snapshot = await raw.recv_json()
                assert welcome["type"] == "welcome"
                assert welcome["protocol"] == (chosen or SUBPROTOCOL_JSON)
                assert isinstance(snapshot, dict) and snapshot["type"] == "snapshot"


async def test_a_msgpack_client_may_send_msgpack_or_json_and_gets_msgpack() -> None:
    """Binary frames are msgpack, text frames JSON; every answer (pong, error, ack) is msgpack."""
    with trio.fail_after(10):
        async with running_app(make_config(tokens=False)) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                await raw.send_msgpack({"type": "ping", "id": 2**63 - 1})
                assert await raw.recv_msgpack() == {"type": "pong", "id": 2**63 - 1}
                await raw.send_text('{"type": "ping", "id": "from-json"}')
                assert await raw.recv_msgpack() == {"type": "pong", "id": "from-json"}
                await raw.send_text("{not json")
                assert (await raw.recv_msgpack())["code"] == "bad_json"  # type: ignore[index]
                cmd = {
                    "type": "command",
                    "id": "c1",
                    "room": "a",
                    "action": "chat.pin",
                    "args": {"msg_id": "nope"},
                }
                await raw.send_msgpack(cmd)
                ack = await raw.recv_msgpack()
                assert isinstance(ack, dict)
                assert (ack["type"], ack["id"], ack["ok"], ack["error"]) == (
                    "ack",
                    "c1",
                    False,
                    "unknown_message",
                )
            # A JSON connection still refuses binary frames, as before.
            async with open_raw(port) as raw:
                assert await raw.handshake(port) == 101
                await raw.recv_json()
                await raw.send_msgpack({"type": "ping"})
                error = await raw.recv_json()
                assert isinstance(error, dict) and error["code"] == "bad_request"
                assert "binary" in error["message"]
            assert app.dashboards.totals.errors == 0


async def test_hostile_msgpack_over_the_wire_gets_errors_and_the_connection_stays() -> None:
    """Every hostile msgpack frame gets its error as msgpack; the reader lives on; no handler fails."""
    server = "max_messages_per_s = 1000\nmessage_burst = 1000"
    with trio.fail_after(15):
        async with running_app(make_config(tokens=False, server=server)) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                for name, payload, code, says in HOSTILE:
                    await raw.send_frame(BINARY, payload)
                    error = await raw.recv_msgpack()
                    assert isinstance(error, dict), name
                    assert (error["type"], error["code"]) == ("error", code), (name, error)
                    assert says in error["message"], (name, error)
                await raw.send_msgpack({"type": "ping", "id": "still here"})
                assert await raw.recv_msgpack() == {"type": "pong", "id": "still here"}
            async with open_raw(port) as good:
                assert await good.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await good.recv_msgpack()
                await good.send_msgpack({"type": "subscribe", "room": "b"})
                snapshot = await good.recv_msgpack()
                assert isinstance(snapshot, dict) and snapshot["type"] == "snapshot"
            await wait_until(lambda: not app.dashboards.dashboards)
            assert app.dashboards.totals.errors == 0


async def test_an_oversized_msgpack_message_closes_1009() -> None:
    """The message size limit holds for binary frames as for text: close 1009."""
    with trio.fail_after(10):
        async with running_app(make_config(tokens=False, server="max_message_bytes = 1024")) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                await raw.send_msgpack({"type": "ping", "id": "x" * 2000})
                with pytest.raises(RawClosed) as closed:
                    while True:
                        await raw.recv_frame()
                assert closed.value.code == 1009
            await wait_until(lambda: not app.dashboards.dashboards)
            assert app.dashboards.totals.limited["message_too_big"] == 1


async def test_no_token_in_time_is_told_in_msgpack(autojump_clock: trio.testing.MockClock) -> None:
    """The auth deadline's error reaches a msgpack connection as msgpack, then close 1008."""
    with trio.fail_after(60):
        async with running_app(make_config(auth="auth_timeout_s = 5.0")) as app:
            port = app.dashboards.port
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                welcome = await raw.recv_msgpack()
                assert isinstance(welcome, dict) and welcome["role"] is None
                started = trio.current_time()
                error = await raw.recv_msgpack()
                assert error == {
                    "type": "error",
                    "code": "unauthorized",
                    "message": "no valid token within 5s",
                }
                assert trio.current_time() - started >= 5.0
                with pytest.raises(RawClosed) as closed:
                    await raw.recv_frame()
                assert closed.value.code == 1008


async def test_resume_gets_the_missed_deltas_as_one_msgpack_array() -> None:
    """Resuming with since gets the missed deltas as one msgpack array equal to the JSON array."""
    config = make_config(tokens=False, server="ring_size = 8")
    with trio.fail_after(15):
        async with running_app(config) as app:
            port = app.dashboards.port
            feed = app.rooms["a"].feed
            await inject(app, "a", 1)
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                await raw.send_msgpack({"type": "subscribe", "room": "a"})
                snapshot = await raw.recv_msgpack()
                assert isinstance(snapshot, dict) and snapshot["type"] == "snapshot"
            epoch, seq = snapshot["epoch"], snapshot["seq"]
            for i in range(4):  # four more deltas while away
                await inject(app, "a", 1, start=10 + i)
            assert feed.seq == seq + 4
            async with open_raw(port) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                since = {"epoch": epoch, "seq": seq}
                await raw.send_msgpack({"type": "subscribe", "room": "a", "since": since})
                opcode, payload = await raw.recv_frame()
                assert opcode == BINARY and payload[0] == 0x94, "an array of the four deltas"
                deltas = msgpack.unpackb(payload)
                assert [d["seq"] for d in deltas] == [seq + 1, seq + 2, seq + 3, seq + 4]
                assert deltas == orjson.loads(feed.deltas_after(seq, limit=256)[1])
            stats = feed.statistics()
            assert stats.msgpack_encoded <= stats.published


async def test_a_msgpack_dashboard_off_the_ring_gets_lagged_then_snapshot() -> None:
    """A msgpack dashboard whose cursor fell off the ring gets lagged, a msgpack snapshot, then live deltas."""
    config = make_config(tokens=False, server="ring_size = 4\ntick_ms = 1")
    view = RoomView()
    with trio.fail_after(30):
        async with running_app(config) as app:
            port = app.dashboards.port
            feed = app.rooms["a"].feed
            async with open_raw(port, rcvbuf=4096) as raw:
                assert await raw.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await raw.recv_msgpack()
                await raw.send_msgpack({"type": "subscribe", "room": "a"})
                view.take(await raw.recv_msgpack())  # type: ignore[arg-type]
                (dash,) = app.dashboards.dashboards
                # It reads nothing: big deltas fill its socket, then more than the ring holds.
                i = 0
                while not dash.conn.congested:
                    await inject(app, "a", 1, start=i, size=20_000)
                    i += 1
                    assert i < 2000, "the socket never filled"
                congested_at = feed.seq
                while feed.seq < congested_at + 6:
                    await inject(app, "a", 1, start=i, size=100)
                    i += 1
                await inject(app, "a", 2, start=i)  # live again after the snapshot
                while view.seq < feed.seq:
                    decoded = await raw.recv_msgpack()
                    for msg in decoded if isinstance(decoded, list) else [decoded]:
                        view.take(msg)
            assert view.lagged == 1
            assert view.snapshots == 2
            assert view.state == snapshot_message(feed.state, feed.seq)["state"]
            assert app.dashboards.totals.lagged["a"] == 1
            stats = feed.statistics()
            assert stats.msgpack_snapshots_encoded == 2
            assert stats.msgpack_encoded <= stats.published


async def test_burst_to_json_and_msgpack_dashboards_of_one_room() -> None:
    """During a burst, JSON and msgpack dashboards (one slow) see contiguous seqs, end equal to the server, and receive the same messages; msgpack takes fewer bytes."""
    payloads = make_feed(2000, seed=11)
    json_clients = [DashClient("", record=i == 0) for i in range(5)]
    mp_clients = [DashClient("", msgpack=True, record=i == 0) for i in range(5)]
    slow = DashClient("", msgpack=True, record=True)
    go = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port, _sent = await serve_feed(
                payloads, nursery=nursery, chunk=100, pause_s=0.02, go=go
            )
            config = parse_config(E2E_CONFIG.format(port=port))
            app = App(config)
            await nursery.start(app.run)
            url = f"ws://127.0.0.1:{app.dashboards.port}/ws"
            room = app.rooms["r1"]

            async def reader(client: DashClient, *, pause: float = 0.0) -> None:
                offered = MSGPACK if client.msgpack else None
                async with open_dashboard(url, subprotocols=offered) as ws:
                    assert ws.subprotocol == (SUBPROTOCOL_MSGPACK if client.msgpack else None)
                    client.ws = ws
                    await client.subscribe("r1")
                    while True:
                        client.take(await ws.get_message())
                        if pause:
                            await trio.sleep(pause)

            everyone = [*json_clients, *mp_clients, slow]
            async with trio.open_nursery() as clients:
                for c in [*json_clients, *mp_clients]:
                    clients.start_soon(reader, c)
                clients.start_soon(lambda: reader(slow, pause=0.003))
                while not all(c.views.get("r1") and c.views["r1"].state for c in everyone):
                    await trio.sleep(0.01)
                go.set()
                while room.counters.records < len(payloads) or not room.actor_idle():
                    await trio.sleep(0.05)
                final_seq = room.feed.seq
                while any(c.views["r1"].seq < final_seq for c in everyone):
                    await trio.sleep(0.05)
                clients.cancel_scope.cancel()
            server_state = snapshot_message(room.feed.state, room.feed.seq)["state"]
            stats = room.feed.statistics()
            nursery.cancel_scope.cancel()

    for c in everyone:
        assert c.views["r1"].state == server_state
        assert not any(m["type"] == "error" for m in c.others), c.others
    assert stats.published > 20
    assert stats.msgpack_encoded <= stats.published, "once per delta, never per dashboard"
    # Same messages: every delta both recorders received decodes to the same object.
    json_deltas, mp_deltas = json_clients[0].deltas, mp_clients[0].deltas
    common = sorted(set(json_deltas) & set(mp_deltas))
    assert len(common) > 20
    assert all(json_deltas[s] == mp_deltas[s] for s in common)
    assert all(slow.deltas[s] == json_deltas[s] for s in set(slow.deltas) & set(json_deltas))
    # The bytes saved: the same deltas, encoded both ways by the server.
    json_bytes = sum(len(orjson.dumps(json_deltas[s])) for s in common)
    mp_bytes = sum(len(msgpack.packb(mp_deltas[s])) for s in common)
    assert mp_bytes < json_bytes
    received = (json_clients[0].bytes_received, mp_clients[0].bytes_received)
    assert received[1] < received[0], f"msgpack dashboard received more: {received}"


async def test_resume_in_msgpack_after_leaving_mid_burst() -> None:
    """A msgpack dashboard that leaves and resumes with since ends equal to the server."""
    payloads = make_feed(1200, seed=5)
    client = DashClient("", msgpack=True)
    go = trio.Event()
    rng = random.Random(3)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port, _sent = await serve_feed(payloads, nursery=nursery, chunk=50, pause_s=0.02, go=go)
            app = App(parse_config(E2E_CONFIG.format(port=port)))
            await nursery.start(app.run)
            url = f"ws://127.0.0.1:{app.dashboards.port}/ws"
            room = app.rooms["r1"]
            for visit in range(4):
                async with open_dashboard(url, subprotocols=MSGPACK) as ws:
                    client.ws = ws
                    await client.subscribe("r1", resume=True)
                    go.set()
                    with trio.move_on_after(rng.uniform(0.05, 0.2) if visit < 3 else 30):
                        while visit < 3 or not (
                            room.counters.records == len(payloads)
                            and room.actor_idle()
                            and client.views["r1"].seq == room.feed.seq
                        ):
                            client.take(await ws.get_message())
                await trio.sleep(rng.uniform(0.0, 0.05))
            server_state = snapshot_message(room.feed.state, room.feed.seq)["state"]
            nursery.cancel_scope.cancel()
    assert client.views["r1"].state == server_state
    assert client.views["r1"].snapshots >= 1


def test_delivery_latency_is_observed_once_per_publish_that_some_dashboard_took() -> None:
    """``on_delivered`` (the latency metric) fires once per publish that at least one
    live dashboard took, in either encoding; not when every live one refused the frame
    (they leave the live set and catch up on their own, observed then)."""
    state = new_room("r", "e1", RoomConfig())
    feed = RoomFeed(state, 0, ring_size=8)
    seen: list[float] = []
    feed.on_delivered = seen.append
    refusing = [FakeSub(msgpack=False, takes=False), FakeSub(msgpack=True, takes=False)]
    for sub in refusing:
        feed.join(sub)
    feed.publish(1, _delta_body("r", "e1", 1), state, 1.0)
    assert seen == [], "nobody took seq 1"
    feed.publish(2, _delta_body("r", "e1", 2), state, 2.0)
    assert seen == [], "the refusing ones left the live set: nobody to write to"
    taking = FakeSub(msgpack=True)
    feed.join(taking)
    feed.join(FakeSub(msgpack=False, takes=False))
    feed.publish(3, _delta_body("r", "e1", 3), state, 3.0)
    assert seen == [3.0] and [seq for seq, _ in taking.frames] == [3]


async def test_bytes_sent_counts_message_payloads_on_every_path() -> None:
    """A dashboard's ``bytes_sent`` (and ``meksd_dashboard_bytes_sent_total``) is the
    payload bytes of the messages it was written, counted alike for messages sent one
    by one (hello, snapshot) and for deltas written in the publishing step, JSON or
    msgpack: the sum of what each client received."""
    config = make_config(tokens=False, server="tick_ms = 1")
    with trio.fail_after(30):
        async with running_app(config) as app:
            port = app.dashboards.port
            feed = app.rooms["a"].feed
            await inject(app, "a", 3)
            async with open_raw(port) as js, open_raw(port) as mp:
                assert await js.handshake(port) == 101
                assert await mp.handshake(port, headers=_protocol_header(MSGPACK)) == 101
                await js.send_text(b'{"type":"subscribe","room":"a"}')
                await mp.send_msgpack({"type": "subscribe", "room": "a"})
                received = {False: 0, True: 0}
                views = {False: RoomView(), True: RoomView()}
                clients = {False: js, True: mp}

                async def read_until(seq: int) -> None:
                    for packed, client in clients.items():
                        view = views[packed]
                        while view.seq < seq:
                            _, payload = await client.recv_frame()
                            received[packed] += len(payload)
                            decoded = (msgpack.unpackb if packed else orjson.loads)(payload)
                            for msg in decoded if isinstance(decoded, list) else [decoded]:
                                if msg.get("type") in ("snapshot", "delta"):
                                    view.take(msg)

                await read_until(feed.seq)  # hello and snapshot: sent one by one
                for i in range(5):  # live now: deltas written in the publishing step
                    await inject(app, "a", 2, start=100 + 10 * i)
                    await read_until(feed.seq)
                sent = {dash.msgpack: dash.bytes_sent for dash in app.dashboards.dashboards}
    assert views[False].seq == views[True].seq == feed.seq
    assert views[False].deltas >= 5 and views[True].deltas >= 5
    assert sent == received
    assert app.dashboards.totals.bytes_sent >= received[False] + received[True]
