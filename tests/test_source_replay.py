"""The replay source: JSONL lines pushed as raw records, paced by their ``ts``."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from meksd.config import ReplaySourceConfig
from meksd.model.raw import RawRecord
from meksd.runtime.sources import ReplaySource, make_source
from meksd.runtime.sources.replay import line_ts, suffix_ids
from tests.support import drain_nowait as drain


def envelope(n: int, ts: int | None = None) -> bytes:
    obj: dict[str, object] = {"event": "chat", "data": {"msgId": f"m{n}", "comment": f"c{n}"}}
    if ts is not None:
        obj = {"ts": ts, **obj}
    return orjson.dumps(obj)


async def play(
    path: Path, *, limit: float = 1000.0, **kwargs: object
) -> tuple[ReplaySource, list[RawRecord], list[float]]:
    """Run a replay source until it returns (or ``limit`` seconds pass); record arrival times."""
    cfg = ReplaySourceConfig(kind="replay", path=str(path), **kwargs)  # type: ignore[arg-type]
    source = ReplaySource(cfg, name="replay:0", room_id="r")
    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    start = trio.current_time()
    with trio.move_on_after(limit):
        await source.run(send)
    records = drain(receive)
    return source, records, [r.received_at - start for r in records]


def test_line_ts() -> None:
    """`ts` is read from a top-level number field; anything else gives None."""
    assert line_ts(b'{"ts": 1500, "event": "x"}') == 1500.0
    assert line_ts(b'{"ts": 1.5}') == 1.5
    assert line_ts(b'{"ts": true}') is None
    assert line_ts(b'{"ts": "1500"}') is None
    assert line_ts(b'[{"ts": 1}]') is None
    assert line_ts(b"{not json") is None


def test_suffix_ids() -> None:
    """msgId, groupId and battleId of every envelope get the suffix; bad JSON stays."""
    line = orjson.dumps(
        [
            {"event": "gift", "data": {"msgId": 7, "groupId": "g", "userId": "u"}},
            {"event": "linkMicArmies", "data": {"battleId": "b", "msgId": "m"}},
            "junk",
        ]
    )
    assert orjson.loads(suffix_ids(line, "~2")) == [
        {"event": "gift", "data": {"msgId": "7~2", "groupId": "g~2", "userId": "u"}},
        {"event": "linkMicArmies", "data": {"battleId": "b~2", "msgId": "m~2"}},
        "junk",
    ]
    assert suffix_ids(b"{bad", "~2") == b"{bad"


async def test_paced_by_ts(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """Lines are pushed (ts - ts0) / speed after the start; lines without ts at once."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(
        b"\n".join(
            [
                envelope(0, ts=10_000),
                envelope(1, ts=11_000),
                b"",
                b"   ",
                envelope(2),  # no ts: right after the previous line
                envelope(3, ts=14_000),
                envelope(4, ts=12_000),  # out of order: no waiting backwards
            ]
        )
        + b"\n"
    )
    with trio.fail_after(100):
        source, records, times = await play(feed, speed=2.0)
    assert [orjson.loads(r.payload)["data"]["msgId"] for r in records] == [
        f"m{i}" for i in range(5)
    ]
    assert times == pytest.approx([0.0, 0.5, 0.5, 2.0, 2.0], abs=1e-6)
    assert all(r.source == "replay:0" for r in records)
    stats = source.statistics()
    assert stats.state == "finished"
    assert stats.records == 5
    assert stats.connects == 1
    assert stats.failures == 0


async def test_speed_zero_does_not_sleep(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """speed = 0 pushes every line without any delay, still checkpointing."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(envelope(i, ts=1000 * i * 60) for i in range(200)))
    with trio.fail_after(10):
        source, records, times = await play(feed, speed=0.0)
    assert len(records) == 200
    assert times[-1] == 0.0
    assert source.statistics().state == "finished"


async def test_bad_lines_are_pushed_untouched(tmp_path: Path) -> None:
    """A malformed line is pushed as is: rejecting it is the normalizer's job."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b'{"ts": 5, "event": "chat", "data": {\n[1, 2]\r\n' + envelope(1))
    with trio.fail_after(10):
        _, records, _ = await play(feed, speed=0.0)
    assert [r.payload for r in records] == [
        b'{"ts": 5, "event": "chat", "data": {',
        b"[1, 2]",
        envelope(1),
    ]


async def test_long_file_read_in_chunks(tmp_path: Path) -> None:
    """Lines spanning read-chunk boundaries come out whole and in order."""
    lines = [orjson.dumps({"event": "chat", "data": {"msgId": str(i), "comment": "x" * (i % 700)}})
             for i in range(3000)]  # fmt: skip
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(lines))
    with trio.fail_after(30):
        _, records, _ = await play(feed, speed=0.0)
    assert [r.payload for r in records] == lines


async def test_loop_suffixes_ids_per_pass(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With loop, passes repeat from the start, paced anew, msgIds suffixed from pass 2."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(envelope(0, ts=0) + b"\n" + envelope(1, ts=1000) + b"\n")
    with trio.fail_after(100):
        source, records, times = await play(feed, speed=1.0, loop=True, limit=2.5)
    ids = [orjson.loads(r.payload)["data"]["msgId"] for r in records]
    assert ids == ["m0", "m1", "m0~2", "m1~2", "m0~3"]
    assert times == pytest.approx([0, 1, 1, 2, 2], abs=1e-6)
    assert source.statistics().connects == 3


async def test_loop_verbatim_when_suffix_disabled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """loop_suffix_ids = false replays lines byte for byte (they will then dedup)."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(envelope(0, ts=0) + b"\n" + envelope(1, ts=1000) + b"\n")
    with trio.fail_after(100):
        _, records, _ = await play(feed, speed=1.0, loop=True, loop_suffix_ids=False, limit=1.5)
    assert [r.payload for r in records] == [
        envelope(0, ts=0),
        envelope(1, ts=1000),
        envelope(0, ts=0),
    ]


async def test_empty_file_does_not_spin_in_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """An empty file with loop = true finishes instead of spinning."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n\n")
    with trio.fail_after(10):
        source, records, _ = await play(feed, loop=True)
    assert records == []
    assert source.statistics().state == "finished"


async def test_unreadable_file_backs_off_and_recovers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A missing file is retried with backoff, never raised, and played once it appears."""
    feed = tmp_path / "later.jsonl"
    source = make_source(
        ReplaySourceConfig(kind="replay", path=str(feed), speed=0.0), room_id="r", index=2
    )
    assert source.name == "replay:2"
    send, receive = trio.open_memory_channel[RawRecord](math.inf)

    async def create_later() -> None:
        await trio.sleep(60)
        stats = source.statistics()
        assert stats.state == "backoff"
        assert stats.failures >= 3
        assert stats.last_error is not None
        assert str(feed) in stats.last_error
        feed.write_bytes(envelope(1))

    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(create_later)
            await source.run(send)
    assert source.statistics().state == "finished"
    assert [r.payload for r in drain(receive)] == [envelope(1)]


async def test_backpressure_blocks_replay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A full channel holds the replay: records counted are those the channel took."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"\n".join(envelope(i) for i in range(50)))
    source = ReplaySource(ReplaySourceConfig(kind="replay", path=str(feed), speed=0.0))
    send, receive = trio.open_memory_channel[RawRecord](3)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run, send)
            await trio.sleep(5)
            assert source.statistics().records == 3
            assert source.statistics().state == "connected"
            got = [await receive.receive() for _ in range(50)]
    assert [r.payload for r in got] == [envelope(i) for i in range(50)]
    assert source.statistics().state == "finished"
