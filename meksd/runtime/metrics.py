"""Prometheus metrics: read the live counters at scrape time, observe only histograms.

The hot path never calls into prometheus_client. Rooms, sources, the hub and the
dashboard server keep plain integer counters (``RoomCounters``, ``FeedStatistics``,
``SourceStatistics``...); :class:`AppCollector` reads them when ``/metrics`` is
scraped and turns them into metric families. Only what cannot be derived from a
counter is observed as it happens, into :class:`Histogram` objects whose
``observe`` is one ``bisect`` and two additions (no lock, no label lookup):

- ``meksd_delivery_latency_seconds{room}``: feed receipt → WebSocket write
  (observed by the dashboard writer);
- ``meksd_event_loop_lag_seconds``: how late a periodic sleep wakes
  (:mod:`meksd.runtime.looplag`);
- ``meksd_gc_pause_seconds{generation}``: cyclic GC pauses
  (:mod:`meksd.runtime.gcpause`).

Every :class:`Metrics` has its own ``CollectorRegistry``; nothing is registered in
prometheus_client's global default registry, so several apps can live in one
process (the tests run many). The names, types and labels are documented in
``docs/metrics.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, get_args

import trio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from meksd import __version__
from meksd.core.normalize import REASONS
from meksd.runtime.access import LIMIT_NAMES, REFUSED_NAMES
from meksd.runtime.gcpause import gc_pauses_observed
from meksd.runtime.health import room_readiness
from meksd.runtime.histogram import Histogram, HistogramFamily
from meksd.runtime.looplag import LoopLagMonitor
from meksd.runtime.sources.base import SourceState

if TYPE_CHECKING:
    from meksd.runtime.app import App

__all__ = [
    "GC_PAUSE_BUCKETS",
    "LATENCY_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "MAX_UNKNOWN_TYPES",
    "REJECT_REASONS",
    "AppCollector",
    "DashboardTotals",
    "Metrics",
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.016, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Delivery latency upper bounds (seconds): 1 ms to 1 s, with the 16 ms tick."""
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Event-loop lag upper bounds (seconds)."""
GC_PAUSE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
"""GC pause upper bounds (seconds): 100 µs to 250 ms."""

REJECT_REASONS = frozenset(REASONS | {"reducer_error"})
"""Rejection reasons exposed (at 0) from the start, so alerts see the first one."""
MAX_UNKNOWN_TYPES = 50
"""Unknown event types exposed per room; the rest are summed under ``type="_other"``
(the feed names them, so their number is not ours to bound)."""

_SOURCE_STATES: tuple[str, ...] = get_args(SourceState)


def _bounded(counts: Mapping[str, int], limit: int) -> list[tuple[str, int]]:
    """``counts`` sorted by key, at most ``limit`` of the largest, the rest as ``_other``."""
    if len(counts) <= limit:
        return sorted(counts.items())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept, rest = ranked[:limit], ranked[limit:]
    return [*sorted(kept), ("_other", sum(n for _, n in rest))]


def _histogram_family(
    name: str,
    documentation: str,
    children: Iterable[tuple[Sequence[str], Histogram]],
    labelnames: Sequence[str] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labelnames))
    for values, hist in children:
        snap = hist.snapshot()
        buckets = [
            (_le(bound), float(count))
            for bound, count in zip(snap.bounds, snap.cumulative, strict=False)
        ]
        buckets.append(("+Inf", float(snap.count)))
        family.add_metric(list(values), buckets, snap.sum)
    return family


def _le(bound: float) -> str:
    return repr(bound)


# --------------------------------------------------------------------------- collector


class DashboardTotals(Protocol):
    """Cumulative dashboard counters the server keeps (the hook ``DashboardServer.totals``).

    Per-dashboard counters vanish with their connection; a Prometheus counter must
    not go down, so the server keeps these running totals.
    """

    @property
    def lagged(self) -> Mapping[str, int]:
        """``lagged`` messages sent, by room."""
        ...

    @property
    def snapshots(self) -> Mapping[str, int]:
        """Snapshots sent, by room."""
        ...

    @property
    def killed(self) -> int:
        """Connections dropped because a send failed or timed out."""
        ...

    @property
    def messages_sent(self) -> int:
        """WebSocket messages sent to dashboards."""
        ...

    @property
    def bytes_sent(self) -> int:
        """Payload bytes of those messages."""
        ...

    @property
    def refused(self) -> Mapping[str, int]:
        """Handshakes refused, by reason (``meksd.runtime.access.REFUSED_NAMES``)."""
        ...

    @property
    def limited(self) -> Mapping[str, int]:
        """Limits hit by open connections, by limit (``meksd.runtime.access.LIMIT_NAMES``)."""
        ...

    @property
    def errors(self) -> int:
        """Connection handlers that failed unexpectedly."""
        ...


class AppCollector:
    """Builds every ``meksd_*`` family from one app's live counters, per scrape.

    Reading the counters is synchronous and does not checkpoint, so a scrape sees
    one consistent moment of the trio thread.
    """

    def __init__(
        self,
        app: App,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._clock = clock

    def describe(self) -> list[Metric]:
        """The families (without samples), so the registry can check names."""
        return [
            *self._families(),
            *(
                HistogramMetricFamily(name, "", labels=[])
                for name in (
                    "meksd_delivery_latency_seconds",
                    "meksd_event_loop_lag_seconds",
                    "meksd_gc_pause_seconds",
                )
            ),
            InfoMetricFamily("meksd_build", ""),
        ]

    def collect(self) -> Iterator[Metric]:
        app = self._app
        fam = {f.name: f for f in self._families()}
        rooms = sorted(app.rooms.values(), key=lambda r: r.room_id)
        now = self._clock()

        def add(name: str, labels: Sequence[str], value: float) -> None:
            family = fam[name]
            assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
            family.add_metric(list(labels), value)

        add("meksd_rooms", (), len(rooms))
        for room in rooms:
            rid = room.room_id
            c = room.counters
            add("meksd_records_received", (rid,), c.records)
            add("meksd_events", (rid,), c.events)
            add("meksd_events_applied", (rid,), c.applied)
            add("meksd_events_duplicate", (rid,), c.duplicates)
            for reason in sorted(REJECT_REASONS | c.rejected.keys()):
                add("meksd_events_rejected", (rid, reason), c.rejected.get(reason, 0))
            for kind, n in _bounded(c.unknown, MAX_UNKNOWN_TYPES):
                add("meksd_events_unknown", (rid, kind), n)
            add("meksd_streaks_timed_out", (rid,), c.streaks_timed_out)
            add("meksd_ingest_queue_depth", (rid,), room.ingest_depth())
            add("meksd_ingest_queue_peak", (rid,), c.ingest_peak)
            add("meksd_ingest_queue_capacity", (rid,), room.settings.ingest_queue)
            add("meksd_actor_restarts", (rid,), c.actor_restarts)
            add("meksd_replies_sent", (rid,), c.replies_sent)
            for reason, n in sorted(c.replies_failed.items()):
                add("meksd_replies_failed", (rid, reason), n)
            add("meksd_reply_attempts", (rid,), c.reply_attempts)
            add("meksd_reply_settle_seconds", (rid,), c.reply_settle_s)
            feed = room.feed.statistics()
            add("meksd_room_seq", (rid,), feed.seq)
            add("meksd_deltas_published", (rid,), feed.published)
            add("meksd_published_bytes", (rid,), feed.published_bytes)
            add("meksd_snapshots_encoded", (rid,), feed.snapshots_encoded)
            add("meksd_msgpack_deltas_encoded", (rid,), feed.msgpack_encoded)
            add("meksd_msgpack_snapshots_encoded", (rid,), feed.msgpack_snapshots_encoded)
            add("meksd_room_ready", (rid,), 1 if room_readiness(room, now).ready else 0)
            add("meksd_source_failovers", (rid,), c.failovers)
            add("meksd_source_failbacks", (rid,), c.failbacks)
            add("meksd_source_stalls", (rid,), c.stalls)
            add("meksd_source_records_dropped", (rid,), c.standby_dropped)
            add("meksd_ingest_backpressure_waits", (rid,), c.ingest_waits)
            add("meksd_ingest_backpressure_seconds", (rid,), c.ingest_wait_s)
            active = room.selector.active
            for index, source in enumerate(room.sources):
                s = source.statistics()
                add("meksd_source_active", (rid, s.name), 1 if index == active else 0)
                for state in _SOURCE_STATES:
                    add("meksd_source_state", (rid, s.name, state), 1 if s.state == state else 0)
                add("meksd_source_records", (rid, s.name), s.records)
                add("meksd_source_connects", (rid, s.name), s.connects)
                add("meksd_source_failures", (rid, s.name), s.failures)
                if s.last_record_at is not None:
                    age = max(0.0, now - s.last_record_at)
                    add("meksd_source_last_record_age_seconds", (rid, s.name), age)

        server = app.dashboards
        per_room: Counter[str] = Counter()
        for dash in server.dashboards:
            per_room.update(dash.subscriptions.keys())
        for room in rooms:
            add("meksd_room_dashboards", (room.room_id,), per_room.get(room.room_id, 0))
        add("meksd_dashboard_connections", (), len(server.dashboards))
        add("meksd_dashboard_connections_accepted", (), server.accepted)
        add("meksd_dashboard_connections_rejected", (), server.rejected)
        totals: DashboardTotals | None = getattr(server, "totals", None)
        if totals is not None:
            for room in rooms:
                rid = room.room_id
                add("meksd_dashboard_lagged", (rid,), totals.lagged.get(rid, 0))
                add("meksd_dashboard_snapshots_sent", (rid,), totals.snapshots.get(rid, 0))
            add("meksd_dashboard_sends_aborted", (), totals.killed)
            add("meksd_dashboard_messages_sent", (), totals.messages_sent)
            add("meksd_dashboard_bytes_sent", (), totals.bytes_sent)
            # Newer fields: a hook that predates them reports zeros.
            refused: Mapping[str, int] = getattr(totals, "refused", {})
            limited: Mapping[str, int] = getattr(totals, "limited", {})
            for reason in sorted({*REFUSED_NAMES, *refused}):
                add("meksd_dashboard_refused", (reason,), refused.get(reason, 0))
            for limit in sorted({*LIMIT_NAMES, *limited}):
                add("meksd_dashboard_limited", (limit,), limited.get(limit, 0))
            add("meksd_dashboard_handler_errors", (), getattr(totals, "errors", 0))

        yield from fam.values()
        m = self._metrics
        current = {room.room_id for room in rooms}
        yield _histogram_family(
            "meksd_delivery_latency_seconds",
            "Feed receipt of a record to the WebSocket write of the message carrying it.",
            ((v, h) for v, h in m.delivery_latency.children() if v[0] in current),
            m.delivery_latency.labelnames,
        )
        yield _histogram_family(
            "meksd_event_loop_lag_seconds",
            "How late the loop-lag task woke from a fixed-interval sleep.",
            [((), m.loop_lag)],
        )
        yield _histogram_family(
            "meksd_gc_pause_seconds",
            "Duration of cyclic garbage collections, by generation.",
            m.gc_pause.children(),
            m.gc_pause.labelnames,
        )
        info = InfoMetricFamily("meksd_build", "meksd version.")
        info.add_metric([], {"version": __version__})
        yield info
        store = getattr(app, "store", None)  # meksd_store_* (meksd.runtime.store)
        if store is not None:
            yield from store.metric_families()

    def _families(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        room, room_source = ["room"], ["room", "source"]
        return [
            GaugeMetricFamily("meksd_rooms", "Rooms running.", labels=[]),
            CounterMetricFamily(
                "meksd_records_received", "Raw feed records taken by the normalizer.", labels=room
            ),
            CounterMetricFamily(
                "meksd_events", "Typed events handed to the room actor.", labels=room
            ),
            CounterMetricFamily(
                "meksd_events_applied", "Events applied to room state.", labels=room
            ),
            CounterMetricFamily(
                "meksd_events_duplicate",
                "Events dropped because their msgId was already seen.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_events_rejected",
                "Records or events refused, by reason.",
                labels=["room", "reason"],
            ),
            CounterMetricFamily(
                "meksd_events_unknown",
                "Envelopes of event types meksd does not handle, by type.",
                labels=["room", "type"],
            ),
            CounterMetricFamily(
                "meksd_streaks_timed_out",
                "Gift streaks closed by streak_timeout_s without an end event.",
                labels=room,
            ),
            GaugeMetricFamily(
                "meksd_ingest_queue_depth",
                "Raw records waiting between sources and normalizer.",
                labels=room,
            ),
            GaugeMetricFamily(
                "meksd_ingest_queue_peak",
                "Highest ingest queue depth seen since start.",
                labels=room,
            ),
            GaugeMetricFamily(
                "meksd_ingest_queue_capacity",
                "Ingest queue size (ingest_queue); at capacity, sources wait.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_actor_restarts",
                "Room actor failures, each followed by a restart from the last good state.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_replies_sent", "Operator replies the upstream took.", labels=room
            ),
            CounterMetricFamily(
                "meksd_replies_failed",
                "Operator replies settled as failed, by reason.",
                labels=["room", "reason"],
            ),
            CounterMetricFamily(
                "meksd_reply_attempts", "POSTs made for settled operator replies.", labels=room
            ),
            CounterMetricFamily(
                "meksd_reply_settle_seconds",
                "Sum of seconds from acceptance to settlement of operator replies.",
                labels=room,
            ),
            GaugeMetricFamily("meksd_room_seq", "Seq of the newest published delta.", labels=room),
            CounterMetricFamily(
                "meksd_deltas_published", "Deltas published to the hub.", labels=room
            ),
            CounterMetricFamily(
                "meksd_published_bytes", "Encoded bytes of published deltas.", labels=room
            ),
            CounterMetricFamily(
                "meksd_snapshots_encoded",
                "Snapshots encoded (at most once per seq, shared by all dashboards).",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_msgpack_deltas_encoded",
                "Deltas transcoded to meks.v1.msgpack (at most once per delta).",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_msgpack_snapshots_encoded",
                "Snapshots encoded in meks.v1.msgpack (at most once per seq).",
                labels=room,
            ),
            GaugeMetricFamily(
                "meksd_room_ready",
                "1 when the room delivers or its silence is explained (as /readyz).",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_source_failovers",
                "Switches from a failing or stalled source to the next one.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_source_failbacks",
                "Switches back to a preferred source that delivers again.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_source_stalls",
                "Times the active source read nothing for stall_s while the room was live.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_source_records_dropped",
                "Records read by a source that was not the active one (not forwarded).",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_ingest_backpressure_waits",
                "Times a source found the ingest queue full and waited.",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_ingest_backpressure_seconds",
                "Seconds sources spent waiting on a full ingest queue.",
                labels=room,
            ),
            GaugeMetricFamily(
                "meksd_source_active",
                "1 for the source whose records feed the room now, 0 for the others.",
                labels=room_source,
            ),
            GaugeMetricFamily(
                "meksd_source_state",
                "1 for the source's current state, 0 for the others.",
                labels=["room", "source", "state"],
            ),
            CounterMetricFamily(
                "meksd_source_records", "Records read by the source.", labels=room_source
            ),
            CounterMetricFamily(
                "meksd_source_connects",
                "Successful connects (handshakes, replay passes).",
                labels=room_source,
            ),
            CounterMetricFamily(
                "meksd_source_failures",
                "Failed connects and dropped connections.",
                labels=room_source,
            ),
            GaugeMetricFamily(
                "meksd_source_last_record_age_seconds",
                "Seconds since the source read its latest record.",
                labels=room_source,
            ),
            GaugeMetricFamily(
                "meksd_room_dashboards", "Dashboards subscribed to the room.", labels=room
            ),
            GaugeMetricFamily(
                "meksd_dashboard_connections", "Dashboard connections open.", labels=[]
            ),
            CounterMetricFamily(
                "meksd_dashboard_connections_accepted",
                "Dashboard WebSocket handshakes accepted.",
                labels=[],
            ),
            CounterMetricFamily(
                "meksd_dashboard_connections_rejected",
                "Dashboard handshakes refused (wrong path, too many connections).",
                labels=[],
            ),
            CounterMetricFamily(
                "meksd_dashboard_lagged",
                "lagged messages sent (a dashboard fell off the ring).",
                labels=room,
            ),
            CounterMetricFamily(
                "meksd_dashboard_snapshots_sent", "Snapshots sent to dashboards.", labels=room
            ),
            CounterMetricFamily(
                "meksd_dashboard_sends_aborted",
                "Connections killed because a send failed or timed out.",
                labels=[],
            ),
            CounterMetricFamily(
                "meksd_dashboard_messages_sent", "Messages sent to dashboards.", labels=[]
            ),
            CounterMetricFamily(
                "meksd_dashboard_bytes_sent", "Bytes sent to dashboards.", labels=[]
            ),
            CounterMetricFamily(
                "meksd_dashboard_refused",
                "Dashboard handshakes refused, by reason (docs/security.md).",
                labels=["reason"],
            ),
            CounterMetricFamily(
                "meksd_dashboard_limited",
                "Limits hit by open dashboard connections, by limit (docs/security.md).",
                labels=["limit"],
            ),
            CounterMetricFamily(
                "meksd_dashboard_handler_errors",
                "Dashboard connections closed by an unexpected error in their handler.",
                labels=[],
            ),
        ]


# --------------------------------------------------------------------------- metrics


class Metrics:
    """One app's registry, its collector, and the histograms the shell observes into.

    Wiring (in ``App``)::

        self.metrics = Metrics(self)                  # __init__
        await nursery.start(self.metrics.run)         # run: loop lag + GC pauses
        AdminServer(self, listen=..., metrics=self.metrics)

    and, in the dashboard writer, once per subscription
    ``latency = metrics.delivery_latency.labels(room_id)``, then
    ``latency.observe(trio.current_time() - received_at)`` after each write.
    """

    def __init__(self, app: App, *, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.delivery_latency = HistogramFamily(("room",), LATENCY_BUCKETS)
        """``meksd_delivery_latency_seconds{room}``: ``.labels(room).observe(s)``."""
        self.loop_lag = Histogram(LOOP_LAG_BUCKETS)
        """``meksd_event_loop_lag_seconds``: observed by :mod:`meksd.runtime.looplag`."""
        self.gc_pause = HistogramFamily(("generation",), GC_PAUSE_BUCKETS)
        """``meksd_gc_pause_seconds{generation}``: observed by :mod:`meksd.runtime.gcpause`."""
        self.collector = AppCollector(app, self)
        self.registry.register(self.collector)
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric now (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure event-loop lag and GC pauses until cancelled.

        The GC callback is installed for exactly the lifetime of this task.
        """
        with gc_pauses_observed(self.gc_pause):
            await LoopLagMonitor(self.loop_lag).run(task_status=task_status)
