"""Sources: upstream feeds of a room, each pushing raw records into its channel.

``make_source`` builds the source a ``[[rooms.sources]]`` table describes. Every
source follows the ``Source`` interface in ``base``: a ``name``, an
``async run(send, *, task_status)`` and a synchronous ``statistics()``.
"""

from __future__ import annotations

from meksd.config import (
    HttpPollSourceConfig,
    ReplaySourceConfig,
    SimulatorSourceConfig,
    SourceConfig,
    WebsocketSourceConfig,
)
from meksd.runtime.sources.base import Pacing, RecordSink, Source, SourceState, SourceStatistics
from meksd.runtime.sources.http_poll import HttpPollSource
from meksd.runtime.sources.replay import ReplaySource
from meksd.runtime.sources.simulator import SimulatorSource
from meksd.runtime.sources.websocket import WebsocketSource

__all__ = [
    "NETWORK_KINDS",
    "HttpPollSource",
    "Pacing",
    "RecordSink",
    "ReplaySource",
    "SimulatorSource",
    "Source",
    "SourceState",
    "SourceStatistics",
    "WebsocketSource",
    "make_source",
]


NETWORK_KINDS = frozenset({"websocket", "http-poll"})
"""Source kinds that read a network feed: they can stall (see ``docs/sources.md``)."""


def make_source(
    cfg: SourceConfig, *, room_id: str, index: int, pacing: Pacing | None = None
) -> Source:
    """The source for ``cfg``, the ``index``-th of room ``room_id``, named
    ``"<kind>:<index>"``. ``pacing`` (network sources) stretches their waits once the
    room's stream ended."""
    name = f"{cfg.kind}:{index}"
    if isinstance(cfg, WebsocketSourceConfig):
        return WebsocketSource(cfg, name=name, room_id=room_id, pacing=pacing)
    if isinstance(cfg, HttpPollSourceConfig):
        return HttpPollSource(cfg, name=name, room_id=room_id, pacing=pacing)
    if isinstance(cfg, ReplaySourceConfig):
        return ReplaySource(cfg, name=name, room_id=room_id)
    if isinstance(cfg, SimulatorSourceConfig):
        return SimulatorSource(cfg, name=name, room_id=room_id)
    raise TypeError(f"not a source config: {cfg!r}")
