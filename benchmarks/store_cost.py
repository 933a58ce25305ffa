"""What one store flush costs: a whole room vs the change of one flush interval.

    python -m benchmarks.store_cost

Builds a typical and a worst-case room with the real reducer, then times, on this
machine, (a) the whole write a room gets first (``state_to_bytes`` for the old
whole-document format and ``state_to_parts`` with no base for the current one) and
(b) the incremental write after one ``flush_ms`` of traffic at 500 events/s, each
encoded and committed to a real SQLite file (WAL, ``synchronous=FULL``) in a
temporary directory; then (c) point 3's flushes: 25 rooms at 50 events/s with the
benchmark feed's msgIds (``BMK<room>.<seq>.<phase>.<ns>``), a flush of all of them
every 250 ms, split into encoding and SQLite time and bytes (head, msgId parts).
Bounded: a fixed number of rounds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from meksd.core.persist import state_to_bytes, state_to_parts
from meksd.core.reduce import expire, new_room, reduce
from meksd.model.events import ChatMessage, Event, GiftSent, User
from meksd.model.state import RoomConfig, RoomState
from meksd.runtime.storedb import RoomWrite, StoreDB

ROUNDS = 20
PER_FLUSH = 125
"""Events in one flush interval: 250 ms at 500 events/s."""


def events(start: int, n: int, gifters: int) -> list[Event]:
    out: list[Event] = []
    for i in range(start, start + n):
        user = User(str(7_000_000 + i % gifters), f"viewer_{i % gifters}", f"Viewer {i % gifters}")
        msg = f"7{i:018d}"  # TikTok msgIds are 19-digit numbers
        if i % 4 == 3:
            # Streakable gifts that never end: each closes by timeout (see build).
            out.append(GiftSent(msg, user, "5655", "Rose", 1, 3, False, f"g{i}", 1, i / 500, i))
        elif i % 4 == 2:
            out.append(GiftSent(msg, user, "5827", "Cap", 0, 1, False, "", 99, i / 500, i))
        else:
            out.append(ChatMessage(msg, user, f"message {i} " + "x" * 60, i / 500, i))
    return out


def build(msg_ids: int, gifters: int) -> tuple[RoomState, int]:
    state = new_room("r", "e", RoomConfig())
    for start in range(0, msg_ids, 500):
        state, _ = reduce(state, events(start, 500, gifters))
        state, _ = expire(state, start / 500 + 100)  # every streak closes: the memory fills
    return state, msg_ids


def timed(fn: object, *args: object, **kwargs: object) -> float:
    started = time.process_time()
    fn(*args, **kwargs)  # type: ignore[operator]
    return (time.process_time() - started) * 1000


POINT3_ROOMS = 25
POINT3_PER_FLUSH = 12
"""Events per room in one flush interval: 250 ms at 50 events/s (point 3)."""


def point3_events(room: int, start: int, n: int) -> list[Event]:
    """The benchmark feed's mix: 3 in 4 chat, 1 in 4 a gift counted at once, 75 users."""
    out: list[Event] = []
    for i in range(start, start + n):
        user = User(str(7_000_000 + i % 75), f"viewer_{i % 75}", f"Viewer {i % 75}")
        msg = f"BMK{room:02d}.{i}.3.{1_700_000_000_000_000_000 + i * 20_000_000}"
        if i % 4 == 3:
            out.append(GiftSent(msg, user, "5827", "Cap", 0, 1, False, "", 99, i / 50, i))
        else:
            out.append(
                ChatMessage(msg, user, "a chat line of the benchmark " + "x" * 150, i / 50, i)
            )
    return out


def point3() -> None:
    """25 rooms after a minute of 50 events/s, then flushes of 12 events per room."""
    rooms = []
    for j in range(POINT3_ROOMS):
        state = new_room(f"r{j}", "e", RoomConfig())
        for start in range(0, 3000, POINT3_PER_FLUSH):
            state, _ = reduce(state, point3_events(j, start, POINT3_PER_FLUSH))
        rooms.append(state)
    with tempfile.TemporaryDirectory() as tmp:
        db = StoreDB.open(Path(tmp) / "s.sqlite3")
        db.write([RoomWrite(s.room_id, "e", 1, state_to_parts(s, 1)) for s in rooms])
        encode_s = write_s = 0.0
        heads = ids = total = 0
        rounds = ROUNDS * 4
        for r in range(rounds):
            start = 3000 + r * POINT3_PER_FLUSH
            later = [
                reduce(s, point3_events(j, start, POINT3_PER_FLUSH))[0] for j, s in enumerate(rooms)
            ]
            started = time.process_time()
            writes = [
                RoomWrite(n.room_id, "e", r + 2, state_to_parts(n, r + 2, base=s))
                for n, s in zip(later, rooms, strict=True)
            ]
            encoded = time.process_time()
            total += db.write(writes)
            write_s += time.process_time() - encoded
            encode_s += encoded - started
            heads += sum(len(w.parts.head) for w in writes)
            ids += sum(len(v) for w in writes for k, _, v in w.parts.upserts if k == "msgids")
            rooms = later
        db.close()
    per = 1000 / rounds
    print(
        f"\npoint 3 ({POINT3_ROOMS} rooms x 50 events/s, a flush every 250 ms, {rounds} "
        f"flushes): encode {encode_s * per:.2f} ms + SQLite {write_s * per:.2f} ms CPU per "
        f"flush, {total / rounds / 1000:.0f} KB (heads {heads / rounds / 1000:.0f} KB, msgIds "
        f"{ids / rounds / 1000:.0f} KB); x 4 flushes/s = "
        f"{(encode_s + write_s) / rounds * 4 * 100:.1f} % of a core"
    )


def main() -> None:
    print(f"python {sys.version.split()[0]}; {ROUNDS} rounds; medians of CPU time (ms)")
    print("| room | whole document | first write (parts) | one flush after 125 events |")
    print("|---|---:|---:|---:|")
    for label, ids, gifters in (("typical", 2_000, 200), ("worst case", 20_000, 3_000)):
        state, n = build(ids, gifters)
        with tempfile.TemporaryDirectory() as tmp:
            db = StoreDB.open(Path(tmp) / "s.sqlite3")
            doc_ms, whole_ms, step_ms = [], [], []
            doc_bytes = whole_bytes = step_bytes = 0
            for r in range(ROUNDS):
                doc_ms.append(timed(state_to_bytes, state, 1))
                doc_bytes = len(state_to_bytes(state, 1))
                started = time.process_time()
                whole = RoomWrite("r", "e", 1, state_to_parts(state, 1))
                db.write([whole])
                whole_ms.append((time.process_time() - started) * 1000)
                whole_bytes = whole.size
                later, _ = reduce(state, events(n + r * PER_FLUSH, PER_FLUSH, gifters))
                started = time.process_time()
                step = RoomWrite("r", "e", 2, state_to_parts(later, 2, base=state))
                db.write([step])
                step_ms.append((time.process_time() - started) * 1000)
                step_bytes = step.size
            db.close()
        print(
            f"| {label}: {len(state.dedup.current) + sum(map(len, state.dedup.sealed))} msgIds, "
            f"{len(state.leaderboard)} gifters, {len(state.closed_streaks)} closed streaks "
            f"| {doc_bytes / 1000:.0f} KB, {statistics.median(doc_ms):.1f} ms encode "
            f"| {whole_bytes / 1000:.0f} KB, {statistics.median(whole_ms):.1f} ms "
            f"| {step_bytes / 1000:.1f} KB, {statistics.median(step_ms):.2f} ms |"
        )


if __name__ == "__main__":
    main()
    point3()
