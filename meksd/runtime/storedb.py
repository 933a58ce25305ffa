"""The store file: SQLite in WAL mode, synchronous, no trio.

Used from a worker thread by the daemon's writer (:mod:`meksd.runtime.store`) and
directly by ``meksd state`` (:mod:`meksd.statecli`). One :class:`StoreDB` is one
connection; its owner serializes calls (it is opened with
``check_same_thread=False`` because trio's worker threads differ from call to call).

Schema (version 2)::

    meta(key PRIMARY KEY, value)              schema = "2"
    rooms(room_id PRIMARY KEY, epoch, seq, clean, saved_at, state)
    parts(room_id, kind, key, value, PRIMARY KEY (room_id, kind, key))
    history(id PRIMARY KEY, room_id, epoch, seq, saved_at, archived_at, reason, state)

A room is its head (``rooms.state``) and its parts: one row per leaderboard row,
streak and msgId segment (:func:`meksd.core.persist.state_to_parts`), so that a flush
writes only what changed. A version 1 file held whole documents in ``rooms.state``
and no parts; such a row still reads, and opening the file for writing upgrades the
schema (adds ``parts``), after which the daemon's next write of the room replaces
the document with a head and parts. ``epoch`` and ``seq`` repeat what the head
holds, for listing without decoding. ``clean`` is 1 only
after a graceful shutdown wrote the room's final state: then ``seq`` is the last
seq the daemon published and dashboards may resume across the restart. ``history``
keeps what ``meksd state reset``/``import`` replaced and rows that could not be read
back: nothing is deleted.

The file is opened with ``journal_mode=WAL`` and ``synchronous=FULL``: a commit is
on disk when :meth:`StoreDB.write` returns, so a kill -9, an OOM kill or a power
cut loses only what was not yet written.

A second process on the same file is kept out by an exclusive ``flock`` on
``<path>.lock`` (:class:`StoreLock`), which holds the owner's pid for messages; the
kernel releases it when the owner dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from meksd.config import StorageConfig
from meksd.core.persist import (
    Part,
    PartsWrite,
    PersistError,
    parts_dump,
    state_from_parts,
    state_to_bytes,
    state_to_parts,
)
from meksd.errors import StoreBusyError
from meksd.model.state import RoomState

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILE",
    "ArchivedRow",
    "RoomWrite",
    "Row",
    "StoreDB",
    "StoreLock",
    "StoredRoom",
    "is_corruption",
    "move_aside",
    "store_path",
]

SCHEMA_VERSION = 3
READABLE_SCHEMAS = ("1", "2", "3")
"""Schema versions this meksd reads; a writable open upgrades 1 and 2 to 3.

2 to 3 changes no table: from 3 on, the open msgId segment may be stored in pieces
(``msgids`` keys ``N.M``, see ``meksd.core.persist``), which an older meksd would
refuse room by room; the version makes it refuse the file instead."""

STORE_FILE = "meksd.sqlite3"
"""The store's file name inside a state directory."""


def store_path(storage: StorageConfig, environ: Mapping[str, str] | None = None) -> Path:
    """Where the store lives: ``[storage] path``, else the state directory.

    ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``; the first entry if
    several), else ``$XDG_STATE_HOME/meksd``, else ``~/.local/state/meksd``.
    """
    if storage.path is not None:
        return Path(storage.path)
    env = os.environ if environ is None else environ
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir) / STORE_FILE
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "meksd" / STORE_FILE


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    clean INTEGER NOT NULL,
    saved_at REAL NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    room_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (room_id, kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    saved_at REAL NOT NULL,
    archived_at REAL NOT NULL,
    reason TEXT NOT NULL,
    state BLOB NOT NULL
);
"""

_CORRUPTION = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class NotAStoreError(sqlite3.DatabaseError):
    """The file is an SQLite database, but not a meksd store this version can use."""

    sqlite_errorname = "SQLITE_NOTADB"


class DamagedStoreError(sqlite3.DatabaseError):
    """SQLite's integrity check found damage."""

    sqlite_errorname = "SQLITE_CORRUPT"


def is_corruption(exc: BaseException) -> bool:
    """Whether ``exc`` says the file is damaged or not a store (as opposed to busy,
    unreadable for permissions, or a full disk, which moving it aside would not fix)."""
    name = getattr(exc, "sqlite_errorname", None)
    return isinstance(name, str) and name.startswith(_CORRUPTION)


@attrs.frozen
class Row:
    """A whole state document (:func:`meksd.core.persist.state_to_bytes`) and what the
    columns repeat: an entry of the history."""

    room_id: str
    epoch: str
    seq: int
    state: bytes


@attrs.frozen
class RoomWrite:
    """One room to write: its new head and the parts that changed."""

    room_id: str
    epoch: str
    seq: int
    parts: PartsWrite

    @classmethod
    def whole(cls, state: RoomState, seq: int) -> RoomWrite:
        """Every part of ``state`` (replacing whatever the room held)."""
        return cls(state.room_id, state.epoch, seq, state_to_parts(state, seq))

    @property
    def size(self) -> int:
        """Encoded bytes written."""
        parts = self.parts
        return len(parts.head) + sum(len(value) for _, _, value in parts.upserts)


@attrs.frozen
class StoredRoom:
    """One row of ``rooms`` as read back."""

    room_id: str
    epoch: str
    seq: int
    clean: bool
    saved_at: float
    """Unix time of the write."""
    state: bytes
    """The head (or, written by schema 1, the whole document)."""
    parts: tuple[Part, ...] = ()

    def decode(self) -> tuple[RoomState, int]:
        """The stored state and seq; raises ``PersistError``."""
        return state_from_parts(self.state, self.parts)

    def document(self) -> bytes:
        """The whole state document, or (when it does not decode) every byte of the
        head and parts as evidence (:func:`meksd.core.persist.parts_dump`)."""
        if not self.parts:
            return self.state
        try:
            return state_to_bytes(*self.decode())
        except PersistError:
            return parts_dump(self.state, self.parts)


@attrs.frozen
class ArchivedRow:
    """One row of ``history`` (without its state)."""

    id: int
    room_id: str
    epoch: str
    seq: int
    saved_at: float
    archived_at: float
    reason: str


class StoreDB:
    """One connection to the store file. Every method blocks: call it from a thread."""

    def __init__(self, conn: sqlite3.Connection, path: Path, schema: str) -> None:
        self._conn = conn
        self.path = path
        self.schema = schema
        """The file's schema version (a read-only open of a version 1 file keeps "1")."""

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False, check: bool = True) -> StoreDB:
        """Open (creating it and its directory unless ``readonly``) and check the file.

        Raises ``sqlite3.DatabaseError``: :func:`is_corruption` tells a damaged file
        (or another program's database) from one that is only unavailable.
        """
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            if check:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise DamagedStoreError("integrity check failed: " + "; ".join(problems))
            schema = _check_schema(conn, create=not readonly)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, schema)

    def close(self) -> None:
        self._conn.close()

    # --- reading ----------------------------------------------------------------

    def rooms(self) -> list[StoredRoom]:
        """Every stored room, by id."""
        return list(self._select_rooms("ORDER BY room_id", ()))

    def room(self, room_id: str) -> StoredRoom | None:
        """One stored room, or None."""
        for room in self._select_rooms("WHERE room_id = ?", (room_id,)):
            return room
        return None

    def history(self, room_id: str | None = None) -> list[ArchivedRow]:
        """Archived rows, oldest first; of one room if given."""
        where, args = ("WHERE room_id = ?", (room_id,)) if room_id is not None else ("", ())
        cur = self._conn.execute(
            "SELECT id, room_id, epoch, seq, saved_at, archived_at, reason FROM history "
            f"{where} ORDER BY id",
            args,
        )
        return [ArchivedRow(*row) for row in cur]

    def _select_rooms(self, where: str, args: tuple[object, ...]) -> Iterator[StoredRoom]:
        cur = self._conn.execute(
            f"SELECT room_id, epoch, seq, clean, saved_at, state FROM rooms {where}", args
        )
        for room_id, epoch, seq, clean, saved_at, state in cur.fetchall():
            yield StoredRoom(
                room_id, epoch, seq, bool(clean), saved_at, bytes(state), self._parts(room_id)
            )

    def _parts(self, room_id: str) -> tuple[Part, ...]:
        if not self._has_parts:
            return ()
        cur = self._conn.execute(
            "SELECT kind, key, value FROM parts WHERE room_id = ? ORDER BY kind, key", (room_id,)
        )
        return tuple((kind, key, bytes(value)) for kind, key, value in cur)

    @property
    def _has_parts(self) -> bool:
        return self.schema != "1"

    # --- writing (each call is one transaction) ----------------------------------

    def write(
        self,
        rooms: Iterable[RoomWrite],
        *,
        clean: bool = False,
        history: Iterable[tuple[Row, str]] = (),
        now: float | None = None,
    ) -> int:
        """Write each room's head and changed parts, and append ``history`` (row,
        reason) entries; return the bytes written."""
        saved_at = time.time() if now is None else now
        written = 0
        with self._transaction() as conn:
            for row, reason in history:
                conn.execute(
                    "INSERT INTO history (room_id, epoch, seq, saved_at, archived_at, reason, "
                    "state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row.room_id, row.epoch, row.seq, saved_at, saved_at, reason, row.state),
                )
                written += len(row.state)
            for room in rooms:
                _write_room(conn, room, clean=clean, saved_at=saved_at)
                written += room.size
        return written

    def set_clean(self, room_ids: Iterable[str] | None, clean: bool) -> None:
        """Set the ``clean`` flag of some rooms (all when ``room_ids`` is None)."""
        with self._transaction() as conn:
            if room_ids is None:
                conn.execute("UPDATE rooms SET clean = ?", (int(clean),))
            else:
                conn.executemany(
                    "UPDATE rooms SET clean = ? WHERE room_id = ?",
                    [(int(clean), room_id) for room_id in room_ids],
                )

    def archive(self, room_id: str, reason: str, *, replace: RoomWrite | None = None) -> bool:
        """Move the room's state to ``history`` (and write ``replace`` in its place).

        One transaction. The history keeps the whole document
        (:meth:`StoredRoom.document`). Returns whether there was a room to archive.
        """
        now = time.time()
        with self._transaction() as conn:
            stored = self.room(room_id)
            if stored is not None:
                conn.execute(
                    "INSERT INTO history (room_id, epoch, seq, saved_at, archived_at, reason, "
                    "state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        room_id,
                        stored.epoch,
                        stored.seq,
                        stored.saved_at,
                        now,
                        reason,
                        stored.document(),
                    ),
                )
            conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            conn.execute("DELETE FROM parts WHERE room_id = ?", (room_id,))
            if replace is not None:
                _write_room(conn, replace, clean=True, saved_at=now)
        return stored is not None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _write_room(conn: sqlite3.Connection, room: RoomWrite, *, clean: bool, saved_at: float) -> None:
    parts = room.parts
    conn.execute(
        "INSERT INTO rooms (room_id, epoch, seq, clean, saved_at, state) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(room_id) DO UPDATE SET "
        "epoch = excluded.epoch, seq = excluded.seq, clean = excluded.clean, "
        "saved_at = excluded.saved_at, state = excluded.state",
        (room.room_id, room.epoch, room.seq, int(clean), saved_at, parts.head),
    )
    if parts.full:
        conn.execute("DELETE FROM parts WHERE room_id = ?", (room.room_id,))
    elif parts.deletes:
        conn.executemany(
            "DELETE FROM parts WHERE room_id = ? AND kind = ? AND key = ?",
            [(room.room_id, kind, key) for kind, key in parts.deletes],
        )
        # A msgId segment's pieces (keys "N.M") go with it: "N." <= key < "N/".
        conn.executemany(
            "DELETE FROM parts WHERE room_id = ? AND kind = 'msgids' AND key >= ? AND key < ?",
            [
                (room.room_id, f"{key}.", f"{key}/")
                for kind, key in parts.deletes
                if kind == "msgids"
            ],
        )
    conn.executemany(
        "INSERT INTO parts (room_id, kind, key, value) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(room_id, kind, key) DO UPDATE SET value = excluded.value",
        [(room.room_id, kind, key, value) for kind, key, value in parts.upserts],
    )


def _check_schema(conn: sqlite3.Connection, *, create: bool) -> str:
    """The file's schema version, after creating (or upgrading) it when ``create``."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and create:
        # One transaction: a failed creation (a full disk) leaves an empty file, which
        # the next attempt creates again, not half a schema.
        _script(
            conn,
            f"{_SCHEMA} INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}');",
        )
        return str(SCHEMA_VERSION)
    if "meta" not in tables:
        raise NotAStoreError("not a meksd store (no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] not in READABLE_SCHEMAS:
        found = "none" if row is None else repr(row[0])
        raise NotAStoreError(f"store schema {found}, this meksd uses {SCHEMA_VERSION}")
    if row[0] != str(SCHEMA_VERSION) and create:
        _script(
            conn,
            f"{_SCHEMA} UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema';",
        )
        return str(SCHEMA_VERSION)
    return str(row[0])


def _script(conn: sqlite3.Connection, sql: str) -> None:
    try:
        conn.executescript(f"BEGIN IMMEDIATE; {sql} COMMIT;")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def move_aside(path: Path, *, now: float | None = None) -> Path:
    """Rename the store file (and its ``-wal``/``-shm``) to ``<name>.corrupt-<UTC time>``.

    Never deletes anything. Returns the new name of the main file.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


class StoreLock:
    """An exclusive ``flock`` on ``<store>.lock``: one process per store file."""

    def __init__(self, path: Path) -> None:
        self.store_path = path
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StoreBusyError`` naming the holder's pid."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreBusyError(
                f"store {self.store_path} is in use by another meksd (pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
