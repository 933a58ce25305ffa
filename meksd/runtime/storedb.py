"""The store file: SQLite in WAL mode, synchronous, no trio.

Used from a worker thread by the daemon's writer (:mod:`meksd.runtime.store`) and
directly by ``meksd state`` (:mod:`meksd.statecli`). One :class:`StoreDB` is one
connection; its owner serializes calls (it is opened with
``check_same_thread=False`` because trio's worker threads differ from call to call).

Schema (version 1)::

    meta(key PRIMARY KEY, value)              schema = "1"
    rooms(room_id PRIMARY KEY, epoch, seq, clean, saved_at, state)
    history(id PRIMARY KEY, room_id, epoch, seq, saved_at, archived_at, reason, state)

``rooms.state`` is :func:`meksd.core.persist.state_to_bytes` output; ``epoch`` and
``seq`` repeat what it holds, for listing without decoding. ``clean`` is 1 only
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
from meksd.errors import StoreBusyError

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILE",
    "ArchivedRow",
    "Row",
    "StoreDB",
    "StoreLock",
    "StoredRoom",
    "is_corruption",
    "move_aside",
    "store_path",
]

SCHEMA_VERSION = 1

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
    """One room to write: its encoded state and what the columns repeat."""

    room_id: str
    epoch: str
    seq: int
    state: bytes


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

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

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
            _check_schema(conn, create=not readonly)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

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
        for room_id, epoch, seq, clean, saved_at, state in cur:
            yield StoredRoom(room_id, epoch, seq, bool(clean), saved_at, bytes(state))

    # --- writing (each call is one transaction) ----------------------------------

    def write(
        self,
        rows: Iterable[Row],
        *,
        clean: bool = False,
        history: Iterable[tuple[Row, str]] = (),
        now: float | None = None,
    ) -> int:
        """Upsert ``rows`` and append ``history`` (row, reason) entries; return the
        bytes of state written."""
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
            for row in rows:
                conn.execute(
                    "INSERT INTO rooms (room_id, epoch, seq, clean, saved_at, state) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(room_id) DO UPDATE SET "
                    "epoch = excluded.epoch, seq = excluded.seq, clean = excluded.clean, "
                    "saved_at = excluded.saved_at, state = excluded.state",
                    (row.room_id, row.epoch, row.seq, int(clean), saved_at, row.state),
                )
                written += len(row.state)
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

    def archive(self, room_id: str, reason: str, *, replace: Row | None = None) -> bool:
        """Move the room's row to ``history`` (and write ``replace`` in its place).

        One transaction. Returns whether there was a row to archive.
        """
        now = time.time()
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO history (room_id, epoch, seq, saved_at, archived_at, reason, state) "
                "SELECT room_id, epoch, seq, saved_at, ?, ?, state FROM rooms WHERE room_id = ?",
                (now, reason, room_id),
            )
            archived = cur.rowcount > 0
            conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            if replace is not None:
                conn.execute(
                    "INSERT INTO rooms (room_id, epoch, seq, clean, saved_at, state) "
                    "VALUES (?, ?, ?, 1, ?, ?)",
                    (replace.room_id, replace.epoch, replace.seq, now, replace.state),
                )
        return archived

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


def _check_schema(conn: sqlite3.Connection, *, create: bool) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and create:
        # One transaction: a failed creation (a full disk) leaves an empty file, which
        # the next attempt creates again, not half a schema.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} "
                f"INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}'); COMMIT;"
            )
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return
    if "meta" not in tables:
        raise NotAStoreError("not a meksd store (no meta table)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or row[0] != str(SCHEMA_VERSION):
        found = "none" if row is None else repr(row[0])
        raise NotAStoreError(f"store schema {found}, this meksd uses {SCHEMA_VERSION}")


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
