"""The load client: N dashboard connections in one process, on its own core.

    python -m benchmarks.client --port P --kind meksd --rooms bench0 --per-room 300

It speaks just enough WebSocket for a dashboard (RFC 6455 client: handshake, unmasked
server frames, masked client frames with a zero key, ping → pong, no extensions) over
plain asyncio protocols (uvloop when installed), because a full client library per
connection would make the client, not the server, the bottleneck.

Every feed event carries a token in its ``msgId`` (see :mod:`benchmarks.feed`):
``BMK<room>.<seq>.<phase>.<sent_ns>``. meksd passes ``msgId`` through to dashboards as
``msg_id`` in its ``chat`` and ``gifts`` items; the peers pass the envelope through
untouched. So the client never needs to understand either protocol beyond finding
tokens (and meksd's ``lagged``/``snapshot`` messages).

Per connection, per frame, the client counts the tokens (``bytes.count``, C speed) and
parses the first and last one. Seqs are contiguous per room and every server keeps
order, so ``first == last_seen + 1 and last - first + 1 == count`` proves nothing was
lost or repeated; anything else takes the slow path that parses every token and
records gaps. The first token is the oldest event in the frame, so its latency is the
frame's worst: the max over all connections is exact. Latency percentiles come from
the *verified* connections (``--verify`` of them, spread over the rooms), where every
token is parsed.

With ``--wire msgpack`` the connections speak ``meks.v1.msgpack`` (meksd only): they
ask for the subprotocol, subscribe with a msgpack binary frame, and read binary
frames. msgpack strings are raw UTF-8 behind a length header, so the tokens appear
verbatim in msgpack frames too and are counted the same way; only the markers of
``lagged``/``snapshot`` messages, of several deltas in one message and of a delta's
chat list are spelled in msgpack bytes.

Stdout protocol with the orchestrator: ``READY <n>`` once every connection is open
(and, for meksd, has its snapshot); then one JSON command per line on stdin
(``stats`` or ``final``), each answered with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import time
from array import array

try:
    import orjson
except ImportError:  # pragma: no cover - the venv has it (meksd depends on it)
    orjson = None  # type: ignore[assignment]

TOKEN = re.compile(rb"BMK(\d+)\.(\d+)\.(\d+)\.(\d+)")
MARK = b"BMK"
BUCKET_NS = 100_000  # latency histogram: 0.1 ms buckets...
BUCKETS = 50_000  # ...up to 5 s, then one overflow bucket
LAGGED = b'"type":"lagged"'
SNAPSHOT = b'"type":"snapshot"'
CHAT = b'"chat":['
# The same in msgpack: a fixstr header (0xa0 | length) before each string.
MP_LAGGED = b"\xa4type\xa6lagged"
MP_SNAPSHOT = b"\xa4type\xa8snapshot"
MP_CHAT = b"\xa4chat"  # "chat_updates" is b"\xacchat_updates": no match
MP_ARRAY_FIRST = frozenset((*range(0x90, 0xA0), 0xDC, 0xDD))
"""First bytes of a msgpack array (fixarray, array 16, array 32): several deltas."""
SUBPROTOCOL_MSGPACK = "meks.v1.msgpack"


class Phase:
    """Latency figures of one phase (a segment of the feed profile)."""

    __slots__ = ("count", "hist", "max_ns")

    def __init__(self) -> None:
        self.hist = [0] * (BUCKETS + 1)
        self.count = 0
        self.max_ns = 0

    def percentile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        target = q * self.count
        seen = 0
        for i, n in enumerate(self.hist):
            seen += n
            if seen >= target:
                return (i + 1) * BUCKET_NS / 1e6  # upper bound of the bucket, ms
        return None


class Stats:
    def __init__(self) -> None:
        self.phases: dict[int, Phase] = {}
        self.frames = 0
        self.bytes = 0
        self.tokens = 0
        self.json_bytes_sampled = 0
        self.msgpack_bytes_sampled = 0
        self.msgpack_frames_sampled = 0

    def phase(self, p: int) -> Phase:
        ph = self.phases.get(p)
        if ph is None:
            ph = self.phases[p] = Phase()
        return ph


STATS = Stats()


class Dashboard(asyncio.Protocol):
    """One dashboard connection."""

    def __init__(self, idx: int, room_idx: int, room: str, args: argparse.Namespace) -> None:
        self.idx = idx
        self.room_idx = room_idx
        self.room = room
        self.kind = args.kind
        self.host = args.host
        self.port = args.port
        # A peer serving several rooms picks the room by path (see peers/broadcast.js).
        multi = args.kind == "peer" and "," in args.rooms
        self.path = f"{args.path.rstrip('/')}/{room_idx}" if multi else args.path
        self.verified = False
        self.series: array | None = None
        self.msgpack = None
        self.wire = args.wire
        if self.wire == "msgpack":
            self.lagged_mark, self.snapshot_mark, self.chat_mark = MP_LAGGED, MP_SNAPSHOT, MP_CHAT
        else:
            self.lagged_mark, self.snapshot_mark, self.chat_mark = LAGGED, SNAPSHOT, CHAT
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = False
        self.last_seq = 0
        self.gaps: list[tuple[int, int]] = []
        self.dups = 0
        self.lagged = 0
        self.snapshots = 0
        self.tokens = 0
        self.frames = 0
        self._fragments: list[bytes] = []
        self._resync = False

    # --- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        offer = (
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL_MSGPACK}\r\n" if self.wire == "msgpack" else ""
        )
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"conn {self.idx} lost: {exc}"))

    def send_text(self, text: bytes, opcode: int = 0x1) -> None:
        n = len(text)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        else:
            header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        # A zero masking key: valid framing, and the payload stays as it is.
        assert self.transport is not None
        self.transport.write(header + b"\0\0\0\0" + text)

    # --- receiving ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            if self.wire == "msgpack":
                answer = f"sec-websocket-protocol: {SUBPROTOCOL_MSGPACK}".encode()
                if answer not in head.lower():
                    self.ready.set_exception(ConnectionError("server did not accept msgpack"))
                    self.transport.close()  # type: ignore[union-attr]
                    return
                self.send_text(msgpack_subscribe(self.room), opcode=0x2)
            elif self.kind == "meksd":
                self.send_text(b'{"type":"subscribe","room":"%s"}' % self.room.encode())
            elif not self.ready.done():
                self.ready.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            end = pos + head + n
            if end > size:
                break
            payload = bytes(buf[pos + head : end])
            if masked:  # servers must not mask; accept it anyway
                mask = buf[pos + head - 4 : pos + head]
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x0:
                self._fragments.append(payload)
                if b0 & 0x80:
                    self.on_message(b"".join(self._fragments), now)
                    self._fragments = []
            elif opcode in (0x1, 0x2):
                if b0 & 0x80:
                    self.on_message(payload, now)
                else:
                    self._fragments = [payload]
            elif opcode == 0x9:  # ping
                self.send_text(payload, opcode=0xA)
            elif opcode == 0x8:  # close
                self.closed = True
                self.transport.close()  # type: ignore[union-attr]
                break
        if pos:
            del buf[:pos]

    def on_message(self, p: bytes, now: int) -> None:
        stats = STATS
        stats.frames += 1
        stats.bytes += len(p)
        self.frames += 1
        if self.msgpack is not None:
            self.msgpack.sample(p)
        if self.kind == "meksd" and (self.lagged_mark in p or self.snapshot_mark in p):
            self.on_control(p, now)
            return
        n = p.count(MARK)
        if n == 0:
            return
        self.tokens += n
        stats.tokens += n
        if self.verified:
            self.on_tokens(TOKEN.findall(p), now)
            return
        if self.kind == "meksd":
            if p[0] == 0x5B or (self.wire == "msgpack" and p[0] in MP_ARRAY_FIRST):
                # "[" (or a msgpack array): several deltas in one message: look closely
                self.on_tokens(TOKEN.findall(p), now)
                return
            # A delta lists its gifts, then its chat: each in feed order, so the
            # frame's lowest and highest seq are among the ends of the two lists.
            found = [TOKEN.search(p), TOKEN.search(p, p.rfind(MARK))]
            cut = p.find(self.chat_mark)
            if cut > 0:
                found.append(TOKEN.search(p, cut))
                before = p.rfind(MARK, 0, cut)
                if before >= 0:
                    found.append(TOKEN.search(p, before))
        else:
            found = [TOKEN.search(p), TOKEN.search(p, p.rfind(MARK))]
        seqs = [(int(m.group(2)), m) for m in found if m is not None]
        if not seqs:
            return
        s0, first = min(seqs, key=lambda sm: sm[0])
        s1 = max(sm[0] for sm in seqs)
        if s0 != self.last_seq + 1 or s1 - s0 + 1 != n:
            self.on_tokens(TOKEN.findall(p), now)  # gap, repeat or reorder: look closely
            return
        self.last_seq = s1
        lat = now - int(first.group(4))
        ph = stats.phase(int(first.group(3)))
        if lat > ph.max_ns:
            ph.max_ns = lat

    def on_tokens(self, tokens: list[tuple[bytes, ...]], now: int) -> None:
        stats = STATS
        series = self.series
        verified = self.verified
        last = self.last_seq
        ph = None
        ph_no = -1
        # Order by seq: meksd lists a delta's gifts before its chat.
        for seq, phase_b, ns_b in sorted((int(t[1]), t[2], t[3]) for t in tokens):
            if seq <= last:
                self.dups += 1
                continue
            if seq != last + 1:
                self.gaps.append((last + 1, seq - 1))
            last = seq
            p = int(phase_b)
            if p != ph_no:
                ph = stats.phase(p)
                ph_no = p
            lat = now - int(ns_b)
            if lat > ph.max_ns:  # type: ignore[union-attr]
                ph.max_ns = lat  # type: ignore[union-attr]
            if verified:
                if lat < 0:
                    lat = 0
                b = lat // BUCKET_NS
                ph.hist[b if b < BUCKETS else BUCKETS] += 1  # type: ignore[union-attr]
                ph.count += 1  # type: ignore[union-attr]
                if series is not None:
                    series.append(now)
                    series.append(lat)
                    series.append(p)
        self.last_seq = last

    def on_control(self, p: bytes, now: int) -> None:
        if self.lagged_mark in p:
            self.lagged += 1
            self._resync = True
            return
        # A snapshot: the initial one, or the resync after `lagged`. Its chat history
        # holds events already seen (repeats, ignored) and maybe some not seen.
        self.snapshots += 1
        if not self.ready.done():
            self.ready.set_result(None)
        tokens = TOKEN.findall(p)
        if self._resync and tokens:
            # What a resync covers is not lost: jump the cursor to the snapshot's newest.
            newest = max(int(t[1]) for t in tokens)
            if newest > self.last_seq:
                self.gaps.append((-(self.last_seq + 1), -newest))  # marked as resynced
                self.last_seq = newest
            self._resync = False


def msgpack_subscribe(room: str) -> bytes:
    """``{"type": "subscribe", "room": room}`` in msgpack."""
    import msgpack

    return msgpack.packb({"type": "subscribe", "room": room})  # type: ignore[no-any-return]


class MsgpackSample:
    """Bytes of the same messages as JSON text and as msgpack: an estimate from what
    one JSON dashboard received (cross-checks the measured ``meks.v1.msgpack`` run)."""

    def __init__(self) -> None:
        import msgpack

        self.packb = msgpack.packb

    def sample(self, p: bytes) -> None:
        obj = orjson.loads(p) if orjson is not None else json.loads(p)
        STATS.json_bytes_sampled += len(p)
        STATS.msgpack_bytes_sampled += len(self.packb(obj))
        STATS.msgpack_frames_sampled += 1


def report(conns: list[Dashboard], spans: dict[str, dict[str, list[int]]]) -> dict[str, object]:
    """Figures per phase. ``spans[phase][room_idx] = [first_seq, last_seq]`` sent."""
    phases: dict[str, object] = {}
    for phase_s, rooms in spans.items():
        p = int(phase_s)
        ph = STATS.phases.get(p) or Phase()
        expected = lost = resynced = disconnected_missing = 0
        for c in conns:
            span = rooms.get(str(c.room_idx))
            if not span or span[1] < span[0]:
                continue
            lo, hi = span
            expected += hi - lo + 1
            for a, b in c.gaps:
                resync = a < 0
                a, b = abs(a), abs(b)
                overlap = min(b, hi) - max(a, lo) + 1
                if overlap > 0:
                    if resync:
                        resynced += overlap
                    else:
                        lost += overlap
            tail = hi - max(c.last_seq, lo - 1)
            if tail > 0:
                if c.closed:
                    disconnected_missing += tail
                else:
                    lost += tail
        phases[phase_s] = {
            "expected": expected,
            "lost": lost,
            "resynced": resynced,
            "lost_disconnected": disconnected_missing,
            "verified_deliveries": ph.count,
            "p50_ms": ph.percentile(0.50),
            "p99_ms": ph.percentile(0.99),
            "p999_ms": ph.percentile(0.999),
            "max_ms": ph.max_ns / 1e6,
        }
    cpu = os.times()
    return {
        "phases": phases,
        "conns": len(conns),
        "open": sum(1 for c in conns if not c.closed),
        "frames": STATS.frames,
        "bytes": STATS.bytes,
        "tokens": STATS.tokens,
        "dups": sum(c.dups for c in conns),
        "lagged": sum(c.lagged for c in conns),
        "snapshots": sum(c.snapshots for c in conns),
        "cpu_s": cpu.user + cpu.system,
        "json_bytes_sampled": STATS.json_bytes_sampled,
        "msgpack_bytes_sampled": STATS.msgpack_bytes_sampled,
        "msgpack_frames_sampled": STATS.msgpack_frames_sampled,
    }


async def amain(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    rooms = args.rooms.split(",")
    conns: list[Dashboard] = []
    for r, room in enumerate(rooms):
        for _ in range(args.per_room):
            conns.append(Dashboard(len(conns), r, room, args))
    # Verified connections: spread over the rooms, and within a room evenly over the
    # connection order. A server that writes to its clients in connection order (the
    # Node peers: `ws` keeps them in a Set) would otherwise have its percentiles taken
    # from the clients it serves first.
    per_room_verify = min(args.per_room, max(1, args.verify // len(rooms))) if args.verify else 0
    step = max(1, args.per_room // per_room_verify) if per_room_verify else 0
    for c in conns:
        i = c.idx % args.per_room
        if per_room_verify and i % step == 0 and i // step < per_room_verify:
            c.verified = True
    if args.series:
        for c in [c for c in conns if c.verified][: args.series_conns]:
            c.series = array("q")
    if args.estimate_msgpack and args.wire == "json":
        conns[0].msgpack = MsgpackSample()
    sem = asyncio.Semaphore(64)

    async def connect(c: Dashboard) -> None:
        async with sem:
            await loop.create_connection(lambda: c, args.host, args.port)
            await asyncio.wait_for(c.ready, 30)

    await asyncio.gather(*(connect(c) for c in conns))
    print(f"READY {len(conns)}", flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        result = report(conns, cmd.get("spans", {}))
        if cmd["cmd"] == "final":
            if args.series:
                series = array("q")
                for c in conns:
                    if c.series is not None:
                        series.extend(c.series)
                with open(args.series, "wb") as f:
                    series.tofile(f)
            print(json.dumps(result), flush=True)
            for c in conns:
                if c.transport is not None:
                    c.transport.close()
            return
        print(json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/ws")
    ap.add_argument("--kind", choices=("meksd", "peer"), required=True)
    ap.add_argument("--rooms", required=True, help="comma-separated room ids")
    ap.add_argument("--per-room", type=int, required=True)
    ap.add_argument("--verify", type=int, default=30, help="connections parsed fully")
    ap.add_argument("--series", help="file for (recv_ns, latency_ns, phase) triples")
    ap.add_argument("--series-conns", type=int, default=4)
    ap.add_argument(
        "--wire",
        choices=("json", "msgpack"),
        default="json",
        help="meksd only: speak meks.v1 (JSON text frames) or meks.v1.msgpack",
    )
    ap.add_argument(
        "--estimate-msgpack",
        action="store_true",
        help="re-encode one JSON dashboard's messages with msgpack to estimate the saving",
    )
    ap.add_argument("--cpu", type=int, help="pin to this CPU")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop

        uvloop.run(amain(args))
    except ImportError:
        asyncio.run(amain(args))


if __name__ == "__main__":
    main()
