"""Regenerate ``examples/demo-feed.jsonl``: a minute of simulated feed plus a few
hand-written lines that exercise the edge cases.

    python examples/make-demo-feed.py > examples/demo-feed.jsonl

Each line is an envelope with a top-level ``ts`` (unix ms) for replay pacing. The
simulated part comes from meksd's own pure generator (``FeedGenerator``, seeded, so
the output is the same every time). The hand-written lines add: a Lion from a big
spender and the exact same line re-delivered (de-duplicated), a streak that never
ends (closed by the 15 s timeout), a streak still open at the end (pending), an array
line with two chats, a malformed line, a gift with a wrong field type, and an event
type meksd does not know.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from meksd.config import SimulatorSourceConfig
from meksd.runtime.sources.feedgen import FeedGenerator

T0 = 1_718_000_000_000
"""Unix ms of the first line."""
SECONDS = 60.0
STEP = 0.1

BIG = {"userId": "7000000000000000001", "uniqueId": "big.spender", "nickname": "Big Spender 👑"}
SLOW = {"userId": 7000000000000000002, "uniqueId": "slow.streaker", "nickname": "Slow Streaker"}
LATE = {"userId": "7000000000000000003", "uniqueId": "late.rose", "nickname": "Late Rose"}


def gift(
    msg_id: str,
    user: dict[str, Any],
    gift: tuple[int, str, int, int],
    repeat: int | str,
    end: bool,
    group: str,
) -> dict[str, Any]:
    gift_id, name, diamonds, gift_type = gift
    return {
        "event": "gift",
        "data": {
            **user,
            "msgId": msg_id,
            "giftId": gift_id,
            "giftName": name,
            "giftType": gift_type,
            "repeatCount": repeat,
            "repeatEnd": end,
            "groupId": group,
            "diamondCount": diamonds,
        },
    }


LION = (6369, "Lion", 29999, 0)
ROSE = (5655, "Rose", 1, 1)


def handcrafted() -> list[tuple[float, bytes]]:
    """(seconds, line) pairs; ``bytes`` so malformed lines stay malformed."""
    lines: list[tuple[float, Any]] = [
        (2.0, gift("9000000000000000001", BIG, LION, 1, True, "9001")),
        (2.5, gift("9000000000000000001", BIG, LION, 1, True, "9001")),  # re-delivered
        (5.0, gift("9000000000000000010", SLOW, ROSE, 1, False, "9010")),
        (5.4, gift("9000000000000000011", SLOW, ROSE, 3, False, "9010")),
        (5.8, gift("9000000000000000012", SLOW, ROSE, 7, False, "9010")),  # never ends
        (
            12.0,
            [
                {
                    "event": "chat",
                    "data": {**BIG, "msgId": "9000000000000000020", "comment": "GG everyone 🦁"},
                },
                {
                    "event": "chat",
                    "data": {
                        **SLOW,
                        "msgId": "9000000000000000021",
                        "comment": "my phone died mid-streak lol",
                    },
                },
            ],
        ),
        (20.0, b'{"event": "gift", "data": {"msgId": "9000000000000000030", "userId": '),
        (21.0, gift("9000000000000000031", BIG, (5655, "Rose", 1, 1), "many", True, "9031")),
        (25.0, {"event": "envelope", "data": {"msgId": "9000000000000000040", "coins": 500}}),
        (59.5, gift("9000000000000000050", LATE, ROSE, 4, False, "9050")),  # pending at the end
    ]
    out = []
    for at, obj in lines:
        if isinstance(obj, bytes):
            out.append((at, b'{"ts": %d, ' % (T0 + round(at * 1000)) + obj[1:]))
        elif isinstance(obj, list):
            out.append((at, orjson.dumps(obj)))  # arrays carry no ts: sent at once
        else:
            out.append((at, orjson.dumps({"ts": T0 + round(at * 1000), **obj})))
    return out


def simulated() -> list[tuple[float, bytes]]:
    config = SimulatorSourceConfig(
        kind="simulator",
        rate=4.0,
        burst_rate=30.0,
        burst_every_s=30.0,
        burst_s=3.0,
        battles=True,
        battle_every_s=50.0,
        battle_s=20.0,
        users=40,
        duplicate_ratio=0.01,
        seed=20240611,
    )
    generator = FeedGenerator(config, wall_ms_at_zero=T0)
    out = []
    for step in range(1, round(SECONDS / STEP) + 1):
        now = step * STEP
        for envelope in generator.next_batch(now):
            out.append((now, orjson.dumps({"ts": T0 + round(now * 1000), **envelope})))
    return out


def main() -> None:
    lines = sorted(simulated() + handcrafted(), key=lambda pair: pair[0])
    sys.stdout.buffer.write(b"".join(line + b"\n" for _, line in lines))


if __name__ == "__main__":
    main()
