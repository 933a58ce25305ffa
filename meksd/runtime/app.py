"""The application: rooms, the dashboard server, signals, shutdown.

::

    serve(config)                     signals; gc.freeze once started
    └── App.run                       root nursery
        ├── Room.run  × N             each in its own cancel scope
        └── DashboardServer.run       per dashboard: reader, writers, heartbeat

Everything long-lived is started with ``nursery.start``, so when :meth:`App.run`
reports started, every room is running and every listener is bound.
Shutdown is a grace period, not a flag: stop accepting, close dashboards with 1001,
then cancel.
"""

from __future__ import annotations

import gc
import signal

import trio
from loguru import logger

from meksd.config import Config, RoomSettings
from meksd.runtime.hub import Hub
from meksd.runtime.room import Room
from meksd.runtime.wsserver import DashboardServer


class App:
    """One meksd process's rooms and listeners."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub = Hub()
        self.rooms: dict[str, Room] = {}
        self.dashboards = DashboardServer(self.hub, config.server)
        self._room_scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every room and listener, report started, run until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for settings in self.config.rooms:
                await self.start_room(settings)
            await nursery.start(self.dashboards.run)
            task_status.started(self)

    async def start_room(self, settings: RoomSettings) -> Room:
        """Add a room and start its tasks (also used by config reload)."""
        assert self._nursery is not None
        server = self.config.server
        room = Room(settings, tick_s=server.tick_ms / 1000, ring_size=server.ring_size)
        scope = trio.CancelScope()
        self.rooms[room.room_id] = room
        self._room_scopes[room.room_id] = scope
        self.hub.add(room.feed)

        async def run_room(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await room.run(task_status=task_status)

        await self._nursery.start(run_room)
        return room

    def stop_room(self, room_id: str) -> None:
        """Remove a room: its dashboards are told, its tasks cancelled."""
        self.hub.remove(room_id)
        self.rooms.pop(room_id, None)
        scope = self._room_scopes.pop(room_id, None)
        if scope is not None:
            scope.cancel()

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, close dashboards (1001), cancel the rest."""
        await self.dashboards.shutdown(self.config.server.shutdown_grace_s)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()


async def serve(config: Config, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
    """Run meksd until SIGTERM or SIGINT, then shut down gracefully and return."""
    app = App(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            # Everything allocated at start-up is long-lived: keep the cyclic GC off it.
            gc.collect()
            gc.freeze()
            logger.info(
                "meksd ready: {rooms} room(s), dashboards on ws://{host}:{port}/ws",
                rooms=len(app.rooms),
                host=app.dashboards.host,
                port=app.dashboards.port,
                event="ready",
            )
            task_status.started(app)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.warning("SIGHUP: config reload is not implemented yet", event="reload")
                    continue
                logger.info(
                    "{sig}: shutting down", sig=signal.Signals(signum).name, event="stopping"
                )
                break
            await app.stop()
            nursery.cancel_scope.cancel()
    logger.info("meksd stopped", event="stopped")
