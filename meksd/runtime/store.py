"""The store writer: room states to SQLite every ``flush_ms``, restored at start.

::

    App.run
    ├── RoomStore.run        open (lock, check, load), then every flush_ms:
    │                        write each room whose published (epoch, seq) moved
    └── Room x N             App.start_room asks RoomStore.restore first

What is written is a room's *published* state, ``feed.state`` at ``feed.seq``: the
state a snapshot at that seq shows, whose msgId memory is exactly the one that
protects its counts. It is written as the change from the state written last
(:func:`meksd.core.persist.state_to_parts`): the head, the leaderboard rows and
streaks that changed, the open msgId segment and any newly sealed one, all in one
transaction. A room's first write in a process, and the next after a failed flush,
is whole. After a kill -9 the room comes back as of the last write; the
feed re-sends its recent history, the restored memory drops what was already
counted and the rest is counted once. Serializing happens in the worker thread too
(the state is an immutable value); the actor never waits for the store.

Epochs across a restart (docs/storage.md):

- After a graceful stop the final flush writes every room with ``clean = 1``; its
  seq is the last one published (or one more, naming the unpublished remainder),
  so the room keeps its epoch and seq and dashboards resume with ``since``.
- After anything else (kill -9, OOM, power loss) the daemon may have published
  deltas after the last write; a dashboard holding one of those seqs must not get
  deltas of another history under the same (epoch, seq). The counts are restored,
  but under a new epoch at seq 0, so every dashboard gets a snapshot.
- A room whose settings now change what a snapshot shows (a shorter chat history)
  also starts a new epoch, as a reload does.

A store that cannot be written (full disk, I/O error, unwritable directory) never
stops the daemon: the error is counted (``meksd_store_write_errors_total``), logged
at most once per ``ERROR_LOG_INTERVAL_S``, and the room stays due, so the next flush
retries. A store file that is damaged (or not a meksd store) is renamed to
``<name>.corrupt-<UTC time>`` at start, never deleted; rooms start new epochs. A row
that does not decode is moved to the ``history`` table, and its room starts anew.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import attrs
import trio
from loguru import logger
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meksd.config import RoomSettings, StorageConfig, room_config
from meksd.core.persist import PersistError, rebase_clock, state_to_bytes, state_to_parts
from meksd.core.reduce import reconfigure
from meksd.core.wire import state_to_wire
from meksd.errors import StoreBusyError, StoreError
from meksd.model.state import RoomState
from meksd.runtime.actor import Owned
from meksd.runtime.grid import next_on_grid
from meksd.runtime.hub import RoomFeed
from meksd.runtime.ratelimit import LogLimiter
from meksd.runtime.room import new_epoch
from meksd.runtime.storedb import (
    STORE_FILE,
    RoomWrite,
    Row,
    StoreDB,
    StoredRoom,
    StoreLock,
    is_corruption,
    move_aside,
    store_path,
)

__all__ = [
    "ERROR_LOG_INTERVAL_S",
    "STORE_FILE",
    "RoomStore",
    "StoreStatistics",
    "store_path",
]

ERROR_LOG_INTERVAL_S = 60.0
"""At most one log line per kind of write error per this many seconds."""


class StoredRoomSource(Protocol):
    """What the writer reads of a room (``meksd.runtime.room.Room`` is one)."""

    @property
    def room_id(self) -> str: ...
    @property
    def feed(self) -> RoomFeed: ...
    @property
    def owned(self) -> Owned: ...


@attrs.frozen
class StoreStatistics:
    """What the store has done; read by metrics."""

    path: str
    """The store file."""
    available: bool
    """Whether the file is open (False: every flush retries opening it)."""
    writes: int
    """Room states written."""
    write_errors: int
    """Flushes (or opens) that failed."""
    bytes_written: int
    """Encoded state bytes written."""
    last_success: float | None
    """Unix time of the last successful flush; None before the first."""
    last_flush_s: float
    """How long the last flush took (encoding and commit), seconds."""
    moved_aside: int
    """Damaged store files renamed since start."""


@attrs.frozen
class _Known:
    """A room state the store can restore: times in unix seconds."""

    state: RoomState
    seq: int
    exact: bool
    """True when ``seq`` is the last seq published in ``state``'s epoch."""


@attrs.frozen
class _Capture:
    room_id: str
    state: RoomState
    seq: int
    base: RoomState | None = None
    """What the store holds of the room (trio clock), to write only the difference."""


class RoomStore:
    """The daemon's side of the store: load at start, flush periodically, final flush.

    Only the trio thread calls its methods; the database work runs in a worker
    thread, one call at a time.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_s: float,
        rooms: Callable[[], Iterable[StoredRoomSource]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.flush_s = flush_s
        self._rooms = rooms
        self.wall_clock = clock
        """Unix time (the stored streak times are in it); tests move it to fake downtime."""
        self._lock = StoreLock(path)
        self._db: StoreDB | None = None
        self._busy = trio.Lock()
        self._known: dict[str, _Known] = {}
        self._written: dict[str, tuple[str, int]] = {}
        self._base: dict[str, RoomState] = {}
        """Per room, the state (trio clock) whose head and parts the file holds now."""
        self._retired: dict[str, _Capture] = {}
        self._ended: list[_Capture] = []
        self._untouched_clean: set[str] = set()
        self._errors = LogLimiter(ERROR_LOG_INTERVAL_S)
        self._log = logger.bind(path=str(path))
        self._writes = 0
        self._write_errors = 0
        self._bytes = 0
        self._last_success: float | None = None
        self._last_flush_s = 0.0
        self._moved_aside = 0
        self._closed = False
        self.write_fault: Callable[[], None] | None = None
        """Test hook: called in the worker thread before each write; may raise."""

    @classmethod
    def from_config(
        cls,
        storage: StorageConfig,
        rooms: Callable[[], Iterable[StoredRoomSource]],
        environ: Mapping[str, str] | None = None,
    ) -> RoomStore | None:
        """The store ``[storage]`` asks for, or None when it is disabled."""
        if not storage.enabled:
            return None
        return cls(store_path(storage, environ), flush_s=storage.flush_ms / 1000, rooms=rooms)

    # --- lifecycle --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open and load the store, report started, then flush every ``flush_s``.

        Raises ``StoreBusyError`` (before reporting started) when another process
        holds the store. Any other problem is logged and retried at each flush.
        """
        try:
            self._lock.acquire()
        except StoreBusyError:
            raise
        except OSError as exc:
            self._unavailable(exc)
        else:
            await trio.to_thread.run_sync(self._open_and_load)
        try:
            task_status.started()
            # At the multiples of flush_s on trio's clock (meksd.runtime.grid): the same
            # instants as the rooms' failover checks with the default 250 ms. A flush
            # that took longer than flush_s is followed at once (back to back), not at
            # the next instant: the bound on what a crash loses stays one flush long.
            due = next_on_grid(trio.current_time(), self.flush_s)
            while True:
                await trio.sleep_until(due)
                await self.flush()
                due = max(next_on_grid(due, self.flush_s), trio.current_time())
        finally:
            if not self._busy.locked():  # else close() is flushing; it releases
                self._release()

    async def close(self) -> None:
        """Final flush for a graceful stop, then close the file and release the lock.

        Call once the rooms are stopped: every room is written with its final
        state and marked clean, so a restart keeps its epoch and seq.
        """
        if self._closed:
            return
        await self.flush(final=True)
        self._closed = True
        async with self._busy:
            self._release()

    def _release(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
        self._lock.release()

    # --- restore ----------------------------------------------------------------

    def restore(self, settings: RoomSettings) -> tuple[Owned, int] | None:
        """The room's stored state as the actor's starting value and the feed's seq.

        Streak times are moved onto trio's clock, so the downtime counts toward
        streak timeouts. None when nothing is stored for the room.
        """
        known = self._known.pop(settings.id, None)
        if known is None:
            return None
        self._untouched_clean.discard(settings.id)
        stored = rebase_clock(known.state, trio.current_time() - self.wall_clock())
        state = reconfigure(stored, room_config(settings))
        reasons = []
        if not known.exact:
            reasons.append("the last run did not stop cleanly")
        if state_to_wire(state) != state_to_wire(stored):
            reasons.append("the settings change what a snapshot shows")
        seq = known.seq
        if reasons:
            state = attrs.evolve(state, epoch=new_epoch())
            seq = 0
        self._written[settings.id] = (stored.epoch, known.seq)
        self._log.info(
            "room restored from the store: {diamonds} diamonds, epoch {epoch} seq {seq}"
            + (" (new epoch: {reason})" if reasons else " (resumable)"),
            room=settings.id,
            diamonds=state.totals.diamonds,
            epoch=state.epoch,
            seq=seq,
            kept_epoch=not reasons,
            reason="; ".join(reasons),
            event="room_restored",
        )
        return Owned(state), seq

    def retire(self, room: StoredRoomSource) -> None:
        """A room removed by a reload: keep its final state (restorable if re-added)."""
        capture = _final(room)
        self._retired[capture.room_id] = capture
        self._written.pop(capture.room_id, None)
        unix = rebase_clock(capture.state, self.wall_clock() - trio.current_time())
        self._known[capture.room_id] = _Known(unix, capture.seq, exact=True)

    def session_ended(self, previous: RoomState) -> None:
        """A room's ``session.reset`` hook: keep the ended session in the history.

        Called in the actor's step: only queues; the next flush writes it.
        """
        self._ended.append(_Capture(previous.room_id, previous, 0))

    # --- flushing ---------------------------------------------------------------

    async def flush(self, *, final: bool = False) -> bool:
        """Write every room whose published state moved since its last write.

        ``final``: write every room's final state (including what its actor had not
        yet published) and mark it clean. Returns whether the write succeeded.
        """
        async with self._busy:
            if self._closed:
                return False
            captures = [
                attrs.evolve(c, base=self._base.get(c.room_id)) for c in self._collect(final)
            ]
            ended = self._ended[:]
            if not captures and not ended and not final:
                return True
            offset = self.wall_clock() - trio.current_time()
            clean_ids = set(self._untouched_clean) if final else set()
            started = trio.current_time()
            try:
                written = await trio.to_thread.run_sync(
                    self._write, captures, ended, offset, final, clean_ids
                )
            except (sqlite3.Error, OSError, PersistError, StoreError) as exc:
                # What the file holds of these rooms is no longer known for sure (the
                # clean marks may have failed after the write): write them whole next.
                for capture in captures:
                    self._base.pop(capture.room_id, None)
                self._failed(exc, rooms=len(captures))
                return False
            finally:
                self._last_flush_s = trio.current_time() - started
            for capture in captures:
                self._written[capture.room_id] = (capture.state.epoch, capture.seq)
                self._base[capture.room_id] = capture.state
                self._retired.pop(capture.room_id, None)
            del self._ended[: len(ended)]
            self._writes += len(captures)
            self._bytes += written
            self._last_success = self.wall_clock()
            if final:
                self._log.info(
                    "final flush: {rooms} room(s) written to {path}",
                    rooms=len(captures),
                    path=str(self.path),
                    event="store_closed",
                )
            return True

    def _collect(self, final: bool) -> list[_Capture]:
        """Synchronous: one consistent moment of every room (no checkpoint inside)."""
        captures: dict[str, _Capture] = dict(self._retired)
        for room in self._rooms():
            if final:
                captures[room.room_id] = _final(room)
                continue
            feed = room.feed
            if self._written.get(room.room_id) != (feed.epoch, feed.seq):
                captures[room.room_id] = _Capture(room.room_id, feed.state, feed.seq)
        return list(captures.values())

    def written(self, room_id: str) -> tuple[str, int] | None:
        """The (epoch, seq) of the room's last successful write (or load), if any."""
        return self._written.get(room_id)

    def _failed(self, exc: BaseException, *, rooms: int) -> None:
        self._write_errors += 1
        kind = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        if self._errors.allow(str(kind), trio.current_time()):
            suppressed = self._errors.suppressed.pop(str(kind), 0)
            self._log.error(
                "store write failed, {rooms} room(s) kept for the next flush: {error}",
                rooms=rooms,
                error=str(exc),
                kind=kind,
                suppressed=suppressed,
                path=str(self.path),
                event="store_write_failed",
            )

    # --- worker thread ------------------------------------------------------------

    def _open_and_load(self) -> None:
        """Open the file (moving a damaged one aside), load and decode every room,
        then mark every row unclean: from now on this process may publish."""
        try:
            db = self._open()
        except (sqlite3.Error, OSError) as exc:
            self._unavailable(exc)
            return
        try:
            for stored in db.rooms():
                self._load(db, stored)
            db.set_clean(None, False)
        except (sqlite3.Error, OSError) as exc:
            # Rows we could not mark unclean might claim a seq this run goes past.
            self._known = {k: attrs.evolve(v, exact=False) for k, v in self._known.items()}
            self._untouched_clean.clear()
            self._write_errors += 1
            self._log.error(
                "store opened but not writable; stored rooms start new epochs: {error}",
                error=str(exc),
                path=str(self.path),
                event="store_write_failed",
            )
        self._db = db
        self._log.info(
            "store open: {rooms} room(s) stored in {path}",
            rooms=len(self._known),
            path=str(self.path),
            event="store_open",
        )

    def _load(self, db: StoreDB, stored: StoredRoom) -> None:
        try:
            state, seq = stored.decode()
            if state.room_id != stored.room_id:
                raise PersistError(f"holds room {state.room_id!r} @ $.state.room_id")
        except PersistError as exc:
            self._log.error(
                "stored state of the room is unreadable; moved to the store's history, "
                "the room starts a new epoch: {error}",
                room=stored.room_id,
                error=str(exc),
                event="store_row_unreadable",
            )
            db.archive(stored.room_id, f"unreadable: {exc}"[:500])
            return
        self._known[stored.room_id] = _Known(state, seq, exact=stored.clean)
        if stored.clean:
            self._untouched_clean.add(stored.room_id)

    def _unavailable(self, exc: BaseException) -> None:
        self._write_errors += 1
        self._log.error(
            "store unavailable, rooms start new epochs; retrying at each flush: {error}",
            error=str(exc),
            path=str(self.path),
            event="store_unavailable",
        )

    def _open(self) -> StoreDB:
        try:
            return StoreDB.open(self.path)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            moved = move_aside(self.path)
            self._moved_aside += 1
            self._log.error(
                "store file is damaged or not a meksd store ({error}); moved aside to "
                "{moved}, rooms start new epochs",
                error=str(exc),
                moved=str(moved),
                path=str(self.path),
                event="store_moved_aside",
            )
            return StoreDB.open(self.path)

    def _write(
        self,
        captures: list[_Capture],
        ended: list[_Capture],
        offset: float,
        final: bool,
        clean_ids: set[str],
    ) -> int:
        if self.write_fault is not None:
            self.write_fault()
        if self._db is None:
            self._lock.acquire()
            db = StoreDB.open(self.path)
            try:
                # Rows written before this run could not be read at start: the rooms
                # began anew, so keep the old rows in the history, never overwrite them.
                for stored in db.rooms():
                    db.archive(stored.room_id, "replaced: the store was unavailable at start")
            except BaseException:
                db.close()
                raise
            self._db = db
            self._log.info("store open", path=str(self.path), event="store_open")

        def room(c: _Capture) -> RoomWrite:
            parts = state_to_parts(c.state, c.seq, base=c.base, offset=offset)
            return RoomWrite(c.room_id, c.state.epoch, c.seq, parts)

        def document(c: _Capture) -> Row:
            data = state_to_bytes(rebase_clock(c.state, offset), c.seq)
            return Row(c.room_id, c.state.epoch, c.seq, data)

        history = [(document(c), "session.reset") for c in ended]
        written = self._db.write([room(c) for c in captures], clean=final, history=history)
        if clean_ids:
            self._db.set_clean(clean_ids, True)
        return written

    # --- metrics ----------------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            path=str(self.path),
            available=self._db is not None,
            writes=self._writes,
            write_errors=self._write_errors,
            bytes_written=self._bytes,
            last_success=self._last_success,
            last_flush_s=self._last_flush_s,
            moved_aside=self._moved_aside,
        )

    def metric_families(self) -> Iterator[Metric]:
        """The ``meksd_store_*`` families (the metrics collector's hook)."""
        s = self.statistics()
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        families: list[tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, float]] = [
            (gauge, "meksd_store_available", "1 while the store file is open.", s.available),
            (counter, "meksd_store_writes", "Room states written to the store.", s.writes),
            (
                counter,
                "meksd_store_write_errors",
                "Store flushes (or opens) that failed; their rooms are retried.",
                s.write_errors,
            ),
            (counter, "meksd_store_written_bytes", "Encoded state bytes written.", s.bytes_written),
            (
                gauge,
                "meksd_store_last_success_timestamp",
                "Unix time of the last successful store flush (0: none yet).",
                s.last_success or 0.0,
            ),
            (
                gauge,
                "meksd_store_last_flush_seconds",
                "Duration of the last store flush (encoding and commit).",
                s.last_flush_s,
            ),
            (
                counter,
                "meksd_store_moved_aside",
                "Damaged store files renamed aside at start.",
                s.moved_aside,
            ),
        ]
        for cls, name, doc, value in families:
            family = cls(name, doc, labels=[])
            family.add_metric([], float(value))
            yield family


def _final(room: StoredRoomSource) -> _Capture:
    """A stopped room's final state: what its actor owns, at the seq that names it.

    If the actor holds changes it did not publish, the state is one seq past the
    feed: a dashboard at the feed's seq then gets a snapshot, never a gap.
    """
    owned = room.owned
    feed = room.feed
    seq = feed.seq if owned.pending.empty else feed.seq + 1
    if owned.state.epoch != feed.epoch:  # pragma: no cover - the actor owns the feed's epoch
        return _Capture(room.room_id, feed.state, feed.seq)
    return _Capture(room.room_id, owned.state, seq)
