"""The simulator: the pure feed generator, and its trio pacing shell."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from meksd.config import SimulatorSourceConfig
from meksd.core.normalize import normalize
from meksd.model.events import Rejected, Unknown
from meksd.model.raw import RawRecord
from meksd.runtime.sources import SimulatorSource, make_source
from meksd.runtime.sources.feedgen import GIFT_CATALOG, FeedGenerator

STEP = 0.01


def run_generator(gen: FeedGenerator, until: float, step: float = STEP) -> list[tuple[float, Any]]:
    out: list[tuple[float, Any]] = []
    for i in range(1, round(until / step) + 1):
        now = i * step
        out.extend((now, envelope) for envelope in gen.next_batch(now))
    return out


def config(**kwargs: Any) -> SimulatorSourceConfig:
    return SimulatorSourceConfig(kind="simulator", **kwargs)


def test_same_seed_same_feed() -> None:
    """With a seed, the generator is deterministic; another seed gives another feed."""
    a = run_generator(FeedGenerator(config(seed=5)), 70)
    b = run_generator(FeedGenerator(config(seed=5)), 70)
    c = run_generator(FeedGenerator(config(seed=6)), 70)
    assert orjson.dumps(a) == orjson.dumps(b)
    assert orjson.dumps(a) != orjson.dumps(c)


def test_config_seed_and_explicit_seed() -> None:
    """The seed argument overrides config.seed."""
    a = run_generator(FeedGenerator(config(seed=1)), 5)
    b = run_generator(FeedGenerator(config(seed=9), seed=1), 5)
    assert orjson.dumps(a) == orjson.dumps(b)


def test_batches_do_not_depend_on_call_pattern() -> None:
    """The number of events due is the integral of the rate, whatever the step."""
    fine = run_generator(FeedGenerator(config(seed=3, battles=False)), 40, step=0.01)
    coarse = run_generator(FeedGenerator(config(seed=3, battles=False)), 40, step=0.5)
    assert len(fine) == len(coarse)


def test_steady_and_burst_rates() -> None:
    """Steady phases emit `rate` events per second, bursts `burst_rate`."""
    cfg = config(seed=11, rate=10, burst_rate=200, burst_every_s=20, burst_s=5, battles=False)
    gen = FeedGenerator(cfg)
    events = run_generator(gen, 40)
    steady = [t for t, _ in events if 0 < t <= 15]
    burst = [t for t, _ in events if 15 < t <= 20]
    assert gen.phase(14.9) == "steady"
    assert gen.phase(15.1) == "burst"
    assert abs(len(steady) - 10 * 15) <= 1
    assert abs(len(burst) - 200 * 5) <= 1
    assert abs(len(events) - (10 * 30 + 200 * 10)) <= 1


def test_streak_shape() -> None:
    """Streaks: rising progress events, then exactly one end per group, same count."""
    events = [e for _, e in run_generator(FeedGenerator(config(seed=2, duplicate_ratio=0)), 120)]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for envelope in events:
        if envelope["event"] == "gift":
            groups[envelope["data"]["groupId"]].append(envelope["data"])
    streakable = {g.gift_id for g in GIFT_CATALOG if g.gift_type == 1}
    ended = 0
    for items in groups.values():
        assert len({(d["giftId"], str(d["userId"])) for d in items}) == 1
        if items[0]["giftType"] != 1:
            assert items[0]["giftId"] not in streakable
            assert len(items) == 1
            continue
        counts = [d["repeatCount"] for d in items]
        ends = [d["repeatEnd"] for d in items]
        assert counts[0] == 1
        assert counts == sorted(counts)
        assert ends.count(True) <= 1
        assert True not in ends[:-1], "nothing after the end event"
        if ends[-1]:
            ended += 1
            assert len(items) >= 2, "a single streakable gift still arrives twice"
            assert counts[-1] == counts[-2]
    assert ended > 50
    assert any(len(items) > 5 for items in groups.values())


def test_duplicates_at_about_the_ratio() -> None:
    """About `duplicate_ratio` of events re-send an earlier msgId verbatim."""
    events = [e for _, e in run_generator(FeedGenerator(config(seed=4, duplicate_ratio=0.05)), 120)]
    with_id = [e for e in events if "msgId" in e["data"]]
    first: dict[str, Any] = {}
    duplicates = 0
    for envelope in with_id:
        key = str(envelope["data"]["msgId"])
        if key in first:
            duplicates += 1
            assert first[key] == envelope
        else:
            first[key] = envelope
    assert 0.03 < duplicates / len(events) < 0.07


def test_no_duplicates_at_ratio_zero() -> None:
    """With duplicate_ratio 0 every msgId is unique."""
    events = [e for _, e in run_generator(FeedGenerator(config(seed=4, duplicate_ratio=0)), 60)]
    ids = [str(e["data"]["msgId"]) for e in events if "msgId" in e["data"]]
    assert len(ids) == len(set(ids))


def test_battles_start_update_and_end() -> None:
    """A battle is a start, rising score updates about every second, an update and an end."""
    cfg = config(seed=8, battle_every_s=40, battle_s=10, rate=1)
    events = [
        (t, e)
        for t, e in run_generator(FeedGenerator(cfg), 80)
        if e["event"] in ("linkMicBattle", "linkMicArmies")
    ]
    statuses = [(t, e["data"]["status"]) for t, e in events if e["event"] == "linkMicBattle"]
    assert [s for _, s in statuses] == ["started", "ended", "started", "ended"]
    assert statuses[0][0] == pytest.approx(30, abs=STEP * 1.5)
    assert statuses[1][0] == pytest.approx(40, abs=STEP * 1.5)
    first = [e["data"] for t, e in events if 30 <= t <= 40 and e["event"] == "linkMicArmies"]
    assert 9 <= len(first) <= 11
    battle_id = str(events[0][1]["data"]["battleId"])
    assert all(str(d["battleId"]) == battle_id for d in first)
    for side in range(2):
        points = [d["battleArmies"][side]["points"] for d in first]
        assert points == sorted(points)
        participants = first[-1]["battleArmies"][side]["participants"]
        assert [p["points"] for p in participants] == sorted(
            (p["points"] for p in participants), reverse=True
        )
    hosts = [u["userId"] for u in events[0][1]["data"]["battleUsers"]]
    assert [str(a["hostUserId"]) for a in first[0]["battleArmies"]] == [str(h) for h in hosts]


def test_no_battles_when_disabled() -> None:
    """battles = false means no battle messages at all."""
    events = run_generator(FeedGenerator(config(seed=8, battles=False)), 120)
    assert not [e for _, e in events if e["event"].startswith("linkMic")]


def test_feed_mix_and_sizes_look_real() -> None:
    """Every event type appears, IDs mix strings and ints, events are ~300 bytes."""
    events = [e for _, e in run_generator(FeedGenerator(config(seed=1)), 120)]
    kinds = Counter(e["event"] for e in events)
    for kind in ("gift", "chat", "like", "member", "follow", "share", "roomUser"):
        assert kinds[kind] > 0, kind
    ids = [e["data"]["msgId"] for e in events if "msgId" in e["data"]]
    assert any(isinstance(i, int) for i in ids)
    assert sum(isinstance(i, str) for i in ids) > len(ids) * 0.8
    sizes = [len(orjson.dumps(e)) for e in events if e["event"] != "linkMicArmies"]
    assert 200 < sum(sizes) / len(sizes) < 400


def test_generated_feed_normalizes_cleanly() -> None:
    """Everything the simulator emits is a known, valid event for the normalizer."""
    events = [e for _, e in run_generator(FeedGenerator(config(seed=12)), 100)]
    for envelope in events:
        raw = RawRecord(orjson.dumps(envelope), 0.0, 0, "simulator:0")
        for item in normalize(raw):
            assert not isinstance(item, Rejected | Unknown), (item, envelope)


def test_caller_far_behind_gets_at_most_about_a_second() -> None:
    """A caller that stalls gets a bounded batch, not the whole backlog."""
    gen = FeedGenerator(config(seed=1, rate=5000, burst_rate=5000, battles=False))
    assert len(gen.next_batch(60.0)) == 5000


async def test_shell_pushes_encoded_events_at_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The trio shell pushes orjson-encoded envelopes at the configured rate."""
    cfg = config(seed=1, rate=50, burst_rate=50, battles=False)
    source = make_source(cfg, room_id="demo", index=0)
    assert isinstance(source, SimulatorSource)
    assert source.name == "simulator:0"
    send, receive = trio.open_memory_channel[RawRecord](math.inf)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run, send)
        await trio.sleep(10.005)
        nursery.cancel_scope.cancel()
    records = []
    while True:
        try:
            records.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert abs(len(records) - 500) <= 1
    assert all(r.source == "simulator:0" for r in records)
    assert isinstance(orjson.loads(records[0].payload), dict)
    received = [r.received_at for r in records]
    assert received == sorted(received)
    stats = source.statistics()
    assert stats.state == "connected"
    assert stats.records == len(records)
    assert stats.connects == 1
    assert stats.last_record_at == records[-1].received_at


async def test_shell_waits_on_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    """A full channel blocks the simulator: nothing is buffered beyond the channel."""
    cfg = config(seed=1, rate=100, burst_rate=100, battles=False)
    source = SimulatorSource(cfg, name="simulator:0")
    send, receive = trio.open_memory_channel[RawRecord](5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.run, send)
        await trio.sleep(3)
        assert source.statistics().records == 5
        assert receive.statistics().current_buffer_used == 5
        taken = [await receive.receive() for _ in range(20)]
        assert len(taken) == 20
        nursery.cancel_scope.cancel()
