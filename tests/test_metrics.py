"""Metrics: the hot-path histograms, loop lag, GC pauses, and the per-app registry."""

from __future__ import annotations

import gc
from collections import Counter
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from meksd.config import parse_config
from meksd.runtime import gcpause
from meksd.runtime.app import App
from meksd.runtime.gcpause import GcPauseTimer, gc_pauses_observed
from meksd.runtime.histogram import Histogram, HistogramFamily
from meksd.runtime.looplag import LoopLagMonitor
from meksd.runtime.metrics import (
    GC_PAUSE_BUCKETS,
    LOOP_LAG_BUCKETS,
    MAX_UNKNOWN_TYPES,
    REJECT_REASONS,
    Metrics,
)

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"

[[rooms]]
id = "a"

[[rooms.sources]]
kind = "simulator"
rate = 0.0
burst_s = 0.0
battles = false
"""


def parse(exposition: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    """A value equal to a bound counts in that bucket; above the last, only in +Inf."""
    h = Histogram((0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 1.0, 7.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.bounds == (0.1, 0.5, 1.0)
    assert snap.cumulative == (2, 3, 4, 5)
    assert snap.count == 5
    assert snap.sum == pytest.approx(8.45)


def test_histogram_rejects_bad_buckets() -> None:
    """Buckets must be finite, strictly ascending and not empty."""
    for bad in ((), (1.0, 1.0), (2.0, 1.0), (1.0, float("inf"))):
        with pytest.raises(ValueError):
            Histogram(bad)


def test_histogram_family_keeps_one_child_per_label_values() -> None:
    """labels() returns the same child for the same values; the arity is checked."""
    fam = HistogramFamily(("room",), (0.1, 1.0))
    assert fam.labels("a") is fam.labels("a")
    assert fam.labels("a") is not fam.labels("b")
    with pytest.raises(ValueError):
        fam.labels("a", "b")
    fam.remove("a")
    assert [values for values, _ in fam.children()] == [("b",)]


async def test_each_app_has_its_own_registry() -> None:
    """Two apps' metrics do not share samples, and nothing lands in the global registry."""
    one, two = App(parse_config(CONFIG)), App(parse_config(CONFIG))
    m1, m2 = Metrics(one), Metrics(two)
    assert m1.registry is not m2.registry
    m1.loop_lag.observe(0.002)
    s1, s2 = parse(m1.exposition()), parse(m2.exposition())
    assert s1[("meksd_event_loop_lag_seconds_count", frozenset())] == 1
    assert s2[("meksd_event_loop_lag_seconds_count", frozenset())] == 0
    assert not any(name.startswith("meksd_") for name in REGISTRY._names_to_collectors)


async def test_exposition_of_a_running_room_and_the_latency_histogram() -> None:
    """Per-room families carry the room label; latency is exposed per running room only."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            app = App(parse_config(CONFIG))
            metrics = Metrics(app, process_collectors=False)
            await nursery.start(app.run)
            latency = metrics.delivery_latency.labels("a")
            latency.observe(0.003)
            latency.observe(0.2)
            metrics.delivery_latency.labels("gone").observe(0.1)  # not a running room
            feed = app.rooms["a"].feed
            feed.snapshot(msgpack=True)  # a msgpack dashboard subscribed
            feed.snapshot(msgpack=True)  # a second one: the same encoding, shared
            unknown = app.rooms["a"].counters.unknown
            for i in range(MAX_UNKNOWN_TYPES + 10):
                unknown[f"type{i:03}"] = 100 - i  # the last ten are the rarest
            found = parse(metrics.exposition())
            nursery.cancel_scope.cancel()

    def v(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert v("meksd_rooms") == 1
    assert v("meksd_records_received_total", room="a") == 0
    assert v("meksd_ingest_queue_capacity", room="a") == 1000
    assert v("meksd_source_state", room="a", source="simulator:0", state="connected") in (0, 1)
    assert v("meksd_delivery_latency_seconds_count", room="a") == 2
    assert v("meksd_delivery_latency_seconds_bucket", room="a", le="0.005") == 1
    assert v("meksd_delivery_latency_seconds_bucket", room="a", le="0.25") == 2
    assert v("meksd_delivery_latency_seconds_sum", room="a") == pytest.approx(0.203)
    assert not any(labels and ("room", "gone") in labels for _, labels in found)
    assert v("meksd_build_info", version="0.1.0") == 1
    assert v("meksd_msgpack_snapshots_encoded_total", room="a") == 1
    assert v("meksd_msgpack_deltas_encoded_total", room="a") == 0
    # Every known rejection reason is there from the start, at 0.
    for reason in REJECT_REASONS:
        assert v("meksd_events_rejected_total", room="a", reason=reason) == 0
    # Unknown types (named by the feed) are bounded; the rarest are summed as _other.
    types = {
        dict(labels)["type"]: value
        for (name, labels), value in found.items()
        if name == "meksd_events_unknown_total"
    }
    assert len(types) == MAX_UNKNOWN_TYPES + 1
    assert types["type000"] == 100
    assert types["_other"] == sum(100 - i for i in range(MAX_UNKNOWN_TYPES, MAX_UNKNOWN_TYPES + 10))
    assert "type059" not in types
    # No process collectors asked for: none exposed.
    assert not any(name.startswith("process_") for name, _ in found)
    # The server's dashboard totals are exposed, at 0 with no dashboard yet.
    assert v("meksd_dashboard_sends_aborted_total") == 0


async def test_dashboard_totals_hook_is_exposed_when_present() -> None:
    """With DashboardServer.totals, lagged/snapshots per room and aborted sends appear."""
    app = App(parse_config(CONFIG))
    metrics = Metrics(app, process_collectors=False)
    app.dashboards.totals = SimpleNamespace(  # type: ignore[attr-defined]
        lagged=Counter({"a": 3}),
        snapshots=Counter({"a": 5}),
        killed=2,
        messages_sent=40,
        bytes_sent=4000,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        found = parse(metrics.exposition())
        nursery.cancel_scope.cancel()
    assert found[("meksd_dashboard_lagged_total", frozenset({("room", "a")}))] == 3
    assert found[("meksd_dashboard_snapshots_sent_total", frozenset({("room", "a")}))] == 5
    assert found[("meksd_dashboard_sends_aborted_total", frozenset())] == 2
    assert found[("meksd_dashboard_messages_sent_total", frozenset())] == 40
    assert found[("meksd_dashboard_bytes_sent_total", frozenset())] == 4000


async def test_loop_lag_on_an_idle_loop_is_zero(autojump_clock: trio.testing.MockClock) -> None:
    """Idle (virtual time): every wake-up is on time, ten samples per second."""
    h = Histogram(LOOP_LAG_BUCKETS)
    monitor = LoopLagMonitor(h, interval_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(1.05)
        nursery.cancel_scope.cancel()
    assert monitor.samples == 10
    assert monitor.worst == 0.0
    snap = h.snapshot()
    assert snap.cumulative[0] == snap.count == 10


async def test_loop_lag_measures_a_late_wake_up(mock_clock: trio.testing.MockClock) -> None:
    """A wake-up 0.2 s after its deadline is observed as 0.2 s of lag."""
    h = Histogram(LOOP_LAG_BUCKETS)
    monitor = LoopLagMonitor(h, interval_s=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.3)  # the loop "stalled": the 0.1 s sleep ends 0.2 s late
        while monitor.samples < 1:
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert monitor.samples == 1
    assert monitor.worst == pytest.approx(0.2)
    snap = h.snapshot()
    index = LOOP_LAG_BUCKETS.index(0.25)
    assert snap.cumulative[index - 1] == 0  # not <= 0.1
    assert snap.cumulative[index] == 1  # <= 0.25


def test_loop_lag_interval_must_be_positive() -> None:
    """A zero interval would spin: refused."""
    with pytest.raises(ValueError):
        LoopLagMonitor(Histogram(LOOP_LAG_BUCKETS), interval_s=0)


def test_gc_pauses_are_timed_by_generation_and_uninstalled() -> None:
    """A full collection is observed under generation 2; after the block, no callback stays."""
    before = list(gc.callbacks)
    family = HistogramFamily(("generation",), GC_PAUSE_BUCKETS)
    with gc_pauses_observed(family) as timer:
        assert timer in gc.callbacks
        gc.collect()
        gc.collect(0)
    assert gc.callbacks == before
    counts = {values: h.snapshot().count for values, h in family.children()}
    assert counts[("2",)] >= 1
    assert counts[("0",)] >= 1
    assert timer.collections >= 2
    seen = timer.collections
    gc.collect()
    assert timer.collections == seen  # uninstalled: not observed any more


def test_gc_install_is_idempotent_and_uninstall_tolerant() -> None:
    """Installing twice adds one callback; uninstalling what is not installed is fine."""
    before = list(gc.callbacks)
    timer = GcPauseTimer(HistogramFamily(("generation",), GC_PAUSE_BUCKETS))
    gcpause.uninstall(timer)
    try:
        gcpause.install(timer)
        gcpause.install(timer)
        assert gc.callbacks.count(timer) == 1
    finally:
        gcpause.uninstall(timer)
    assert gc.callbacks == before


def test_gc_timer_needs_a_generation_label() -> None:
    """The family must be labelled by generation only."""
    with pytest.raises(ValueError):
        GcPauseTimer(HistogramFamily(("room",), GC_PAUSE_BUCKETS))


async def test_metrics_run_installs_gc_timing_for_its_lifetime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Metrics.run samples loop lag and times GC while running, and cleans up when cancelled."""
    before = list(gc.callbacks)
    metrics = Metrics(App(parse_config(CONFIG)), process_collectors=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.run)
        assert len(gc.callbacks) == len(before) + 1
        gc.collect()
        await trio.sleep(0.55)
        nursery.cancel_scope.cancel()
    assert gc.callbacks == before
    assert metrics.loop_lag.snapshot().count == 5
    assert sum(h.snapshot().count for _, h in metrics.gc_pause.children()) >= 1
