"""The application: rooms, listeners, signals, systemd, reload, shutdown.

::

    serve(config)                     signals; sd_notify; watchdog; gc.freeze once up
    └── App.run                       root nursery
        ├── Room.run  x N             each in its own cancel scope
        ├── DashboardServer.run       per dashboard: reader, writer, catch-up pump, heartbeat
        ├── Metrics.run               event-loop lag, GC pauses
        └── AdminServer.run           /healthz /readyz /metrics /api/rooms

Everything long-lived is started with ``nursery.start``, so when :meth:`App.run`
reports started, every room is running and every listener is bound; only then does
:func:`serve` send ``READY=1``. Shutdown is a grace period, not a flag: stop
accepting, close dashboards with 1001, then cancel.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Mapping

import attrs
import trio
from loguru import logger

from meksd.config import Config, RoomSettings, load_config, room_config
from meksd.core.reduce import reconfigure
from meksd.core.replies import ReplySettled
from meksd.core.wire import state_to_wire
from meksd.errors import ConfigError
from meksd.logsetup import configure_logging, flush_suppressed
from meksd.model.state import Reply
from meksd.runtime.actor import InboxItem, Owned
from meksd.runtime.admin import AdminServer
from meksd.runtime.commands import CommandRouter
from meksd.runtime.grid import next_on_grid
from meksd.runtime.hub import Hub, RoomFeed
from meksd.runtime.metrics import Metrics
from meksd.runtime.notify import Notifier, NotifyError, run_watchdog, watchdog_interval
from meksd.runtime.room import Room, new_epoch
from meksd.runtime.store import RoomStore
from meksd.runtime.wsserver import DashboardServer

PROBE_TIMEOUT_S = 5.0
GC_THRESHOLDS = (3_000, 10, 200)
"""``gc.set_threshold`` once up: allocations (minus deallocations) between
generation-0 collections, generation-0 collections per generation-1 one, and
generation-1 collections per full one (docs/architecture.md, "GC")."""
STATUS_EVERY_S = 10.0


class App:
    """One meksd process's rooms and listeners."""

    def __init__(self, config: Config, *, log_level: str | None = None) -> None:
        self.config = config
        self.log_level = log_level
        """A ``--log-level`` given on the command line wins over ``[log] level``."""
        self.hub = Hub()
        self.rooms: dict[str, Room] = {}
        self.dashboards = DashboardServer(self.hub, config.server, auth=config.auth)
        self.metrics = Metrics(self)
        self.dashboards.latency = self.metrics.delivery_latency
        self.dashboards.commands = CommandRouter(self._room_inbox)
        self.admin = AdminServer(self, listen=config.server.http_listen, metrics=self.metrics)
        self._room_scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self.store = RoomStore.from_config(config.storage, lambda: self.rooms.values())
        """Room states for restarts (``[storage]``); None when disabled."""

    async def run(self, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every room and listener, report started, run until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.store is not None:  # opened and loaded before any room starts
                await nursery.start(self.store.run)
            for settings in self.config.rooms:
                await self.start_room(settings)
            await nursery.start(self.dashboards.run)
            await nursery.start(self.metrics.run)
            await nursery.start(self.admin.run)
            task_status.started(self)

    # --- rooms ------------------------------------------------------------------

    async def start_room(
        self, settings: RoomSettings, *, owned: Owned | None = None, feed: RoomFeed | None = None
    ) -> Room:
        """Add a room and start its tasks (also used by reload, keeping state and feed)."""
        assert self._nursery is not None
        server = self.config.server
        seq = 0
        if owned is None and feed is None and self.store is not None:
            restored = self.store.restore(settings)
            if restored is not None:
                owned, seq = restored
        room = Room(
            settings,
            tick_s=server.tick_ms / 1000,
            ring_size=server.ring_size,
            owned=owned,
            feed=feed,
            seq=seq,
        )
        if self.store is not None:
            room.session_hooks.append(self.store.session_ended)
        room.reply_hooks.append(self._reply_settled)
        scope = trio.CancelScope()
        self.rooms[room.room_id] = room
        self._room_scopes[room.room_id] = scope
        if feed is None:
            self.hub.add(room.feed)
            histogram = self.metrics.delivery_latency.labels(room.room_id)
            # Live dashboards are all written in the publishing step: one observation.
            room.feed.on_delivered = lambda t: histogram.observe(trio.current_time() - t)

        async def run_room(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await room.run(task_status=task_status)

        await self._nursery.start(run_room)
        return room

    def _reply_settled(self, reply: Reply, verdict: ReplySettled) -> None:
        """Tell the operator who sent ``reply`` how it ended (if still connected)."""
        message: dict[str, object] = {
            "type": "reply_result",
            "reply_id": reply.reply_id,
            "ok": verdict.ok,
        }
        if not verdict.ok:
            message["error"] = reply.error
        self.dashboards.notify(reply.origin, message)

    def _room_inbox(self, room_id: str) -> trio.MemorySendChannel[InboxItem] | None:
        room = self.rooms.get(room_id)
        return None if room is None else room.inbox

    def stop_room(self, room_id: str, *, keep_feed: bool = False) -> Room | None:
        """Cancel a room's tasks; unless ``keep_feed``, remove it (its dashboards are told).

        Its pending operator replies are settled ``failed: shutdown`` first, in this
        synchronous call, so a restarted room (reload) takes over none of them.
        """
        running = self.rooms.get(room_id)
        if running is not None:
            running.settle_replies("shutdown")
        if not keep_feed:
            self.hub.remove(room_id)
        scope = self._room_scopes.pop(room_id, None)
        if scope is not None:
            scope.cancel()
        room = self.rooms.pop(room_id, None)
        if room is not None and not keep_feed and self.store is not None:
            self.store.retire(room)
        return room

    async def healthy(self) -> bool:
        """A round trip through every room's actor, all within ``PROBE_TIMEOUT_S``."""
        rooms = list(self.rooms.values())
        with trio.move_on_after(PROBE_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for room in rooms:
                    nursery.start_soon(room.probe)
            return True
        return False

    # --- reload -----------------------------------------------------------------

    async def reload(self, new: Config) -> None:
        """Apply a new configuration without dropping dashboards of untouched rooms.

        Rooms only in ``new`` start; rooms no longer in it stop (their dashboards get
        ``room_closed``); rooms whose settings changed restart their tasks with their
        state, pending changes and feed kept, so their dashboards stay subscribed and
        their seq continues. Listener addresses cannot change without a restart.
        """
        old = self.config
        server = new.server
        if (server.ws_listen, server.http_listen) != (old.server.ws_listen, old.server.http_listen):
            logger.warning(
                "reload: listen addresses changed; they take effect at the next restart",
                event="reload",
            )
            server = attrs.evolve(
                server, ws_listen=old.server.ws_listen, http_listen=old.server.http_listen
            )
        if server.ring_size != old.server.ring_size:
            logger.warning("reload: ring_size applies to rooms started from now on", event="reload")
        if new.storage != old.storage:
            logger.warning(
                "reload: [storage] changes take effect at the next restart", event="reload"
            )
            new = attrs.evolve(new, storage=old.storage)
        self.config = attrs.evolve(new, server=server)
        self.dashboards.config = server
        self.dashboards.set_auth(self.config.auth)  # revoked tokens' dashboards: 1008
        old_rooms = {r.id: r for r in old.rooms}
        new_rooms = {r.id: r for r in new.rooms}
        tick_changed = server.tick_ms != old.server.tick_ms
        for room_id in old_rooms.keys() - new_rooms.keys():
            self.stop_room(room_id)
            logger.info("reload: room removed", room=room_id, event="room_removed")
        for room_id, settings in new_rooms.items():
            if room_id not in old_rooms:
                await self.start_room(settings)
                logger.info("reload: room added", room=room_id, event="room_added")
            elif settings != old_rooms[room_id] or tick_changed:
                await self._restart_room(settings)
        if self.log_level is None and new.log.level != old.log.level:
            configure_logging(new.log.level)

    async def _restart_room(self, settings: RoomSettings) -> None:
        """Restart a room's tasks under new settings, keeping its state and its feed.

        If the new limits change what a snapshot shows (a shorter chat history), the
        room starts a new epoch with the same counts, so every dashboard resyncs;
        otherwise its dashboards go on from the same seq.
        """
        room = self.stop_room(settings.id, keep_feed=True)
        assert room is not None
        owned = room.owned
        state = reconfigure(owned.state, room_config(settings))
        if state_to_wire(state) != state_to_wire(owned.state):
            state = attrs.evolve(state, epoch=new_epoch())
            owned = Owned(state)  # the snapshot includes what was pending
            room.feed.reset(state, 0)
            resync = True
        else:
            owned = attrs.evolve(owned, state=state)
            resync = False
        restarted = await self.start_room(settings, owned=owned, feed=room.feed)
        restarted.previous = room.previous  # the session a reset ended, if any
        logger.info(
            "reload: room restarted with new settings",
            room=settings.id,
            resync=resync,
            event="room_changed",
        )

    # --- shutdown ---------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, close dashboards (1001), cancel the rest."""
        await self.dashboards.shutdown(self.config.server.shutdown_grace_s)
        if self.store is not None:
            # Stop the rooms first, so that what the final flush writes is final.
            for scope in self._room_scopes.values():
                scope.cancel()
            await self.store.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def status_line(self, events_per_s: float) -> str:
        dashboards = len(self.dashboards.dashboards)
        return f"{len(self.rooms)} rooms, {dashboards} dashboards, {events_per_s:.0f} events/s"

    def events_total(self) -> int:
        return sum(room.counters.events for room in self.rooms.values())


async def _flush_log_summaries() -> None:
    """Write rate-limited log summaries ("suppressed K similar lines") within a second."""
    while True:
        await trio.sleep_until(next_on_grid(trio.current_time(), 1.0))
        flush_suppressed()


async def _report_status(app: App, notifier: Notifier) -> None:
    """``STATUS=`` for ``systemctl status``: rooms, dashboards, events/s."""
    last_total, last_at = app.events_total(), trio.current_time()
    while True:
        await trio.sleep_until(next_on_grid(trio.current_time(), STATUS_EVERY_S))
        total, now = app.events_total(), trio.current_time()
        rate = (total - last_total) / max(now - last_at, 1e-9)
        last_total, last_at = total, now
        _notify(notifier.status, app.status_line(rate))


def _notify(send: object, *args: str) -> None:
    try:
        send(*args)  # type: ignore[operator]
    except NotifyError as exc:
        logger.warning("sd_notify failed: {exc}", exc=str(exc), event="notify_error")


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    log_level: str | None = None,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run meksd until SIGTERM or SIGINT, then shut down gracefully and return.

    SIGHUP re-reads ``config_path``; a config that does not load is logged and the
    running one kept.
    """
    env = os.environ if environ is None else environ
    notifier = Notifier.from_env(env)
    app = App(config, log_level=log_level)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(app.run)
            # Everything allocated at start-up is long-lived: keep the cyclic GC off it.
            gc.collect()
            gc.freeze()
            # Most objects die young and are freed by reference counting; a generation
            # 0 threshold of 700 (CPython's) collected them while still alive, aged
            # them into generation 2 and set off full collections over every room's
            # state (up to 100 ms with 25 rooms). See docs/architecture.md.
            gc.set_threshold(*GC_THRESHOLDS)
            logger.info(
                "meksd ready: {rooms} room(s), dashboards on ws://{host}:{port}/ws",
                rooms=len(app.rooms),
                host=app.dashboards.host,
                port=app.dashboards.port,
                ws_port=app.dashboards.port,
                http_port=app.admin.port,
                event="ready",
            )
            _notify(notifier.ready, app.status_line(0))
            interval = watchdog_interval(env)
            if interval is not None and notifier.enabled:
                await nursery.start(run_watchdog, notifier, app.healthy, interval / 2)
            if notifier.enabled:
                nursery.start_soon(_report_status, app, notifier)
            nursery.start_soon(_flush_log_summaries)
            task_status.started(app)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await _reload(app, config_path, notifier)
                    continue
                name = signal.Signals(signum).name
                logger.info("{sig}: shutting down", sig=name, event="stopping")
                _notify(notifier.stopping)
                break
            await app.stop()
            nursery.cancel_scope.cancel()
    logger.info("meksd stopped", event="stopped")


async def _reload(app: App, config_path: str | None, notifier: Notifier) -> None:
    if config_path is None:
        logger.warning("SIGHUP: running on the embedded default; nothing to reload", event="reload")
        return
    _notify(notifier.reloading)
    try:
        new = load_config(config_path)
    except ConfigError as exc:
        logger.error(
            "reload rejected, keeping the running config: {problems}",
            problems="; ".join(exc.messages),
            path=config_path,
            event="reload_failed",
        )
    else:
        await app.reload(new)
        logger.info("config reloaded from {path}", path=config_path, event="reloaded")
    _notify(notifier.ready, app.status_line(0))
