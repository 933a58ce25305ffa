"""``meksd state``: the operator's tools on the store file.

::

    meksd state list                 [--config FILE | --store PATH]
    meksd state export ROOM [-o OUT] [--config FILE | --store PATH]
    meksd state import ROOM IN       [--config FILE | --store PATH]
    meksd state reset ROOM           [--config FILE | --store PATH]

They work on the store file directly (:mod:`meksd.runtime.storedb`), without a
running daemon. The store is found as the daemon finds it: ``--store``, else the
``[storage] path`` of ``--config``, else the default state directory.

- ``list`` and ``export`` only read; they may run while the daemon runs (they see
  its last flush, at most ``flush_ms`` old).
- ``import`` and ``reset`` change the store. A running daemon would overwrite what
  they write at its next flush, so they take the store's lock and refuse (exit 75)
  while a daemon holds it: stop the daemon first.

``export`` writes the room's stored state document (``meksd.core.persist``: JSON,
one line) to OUT or stdout. ``import`` replaces the room's stored state with the
one in IN (same room id), under a new epoch; ``reset`` starts the room's next
session: a new epoch, zero counts, the msgId memory kept (exactly as the dashboard
command ``session.reset`` does). Both keep the state they replace in the store's
``history`` table. Errors map to exit codes in :mod:`meksd.cli`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from meksd.config import StorageConfig, load_config
from meksd.core.commands import start_session
from meksd.core.persist import PersistError, state_from_bytes, state_to_bytes
from meksd.errors import DataError, InputError, StoreError, UsageError
from meksd.model.state import RoomState
from meksd.runtime.storedb import RoomWrite, StoreDB, StoredRoom, StoreLock, store_path

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``list``, ``export``, ``import`` and ``reset`` under ``meksd state``."""
    commands = parser.add_subparsers(dest="state_command", metavar="ACTION")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        where = sub.add_mutually_exclusive_group()
        where.add_argument(
            "--config", metavar="FILE", help="find the store by this config's [storage] path"
        )
        where.add_argument("--store", metavar="PATH", help="the store file itself")
        return sub

    listing = command("list", "list the rooms in the store")
    listing.set_defaults(handler=_list)
    export = command("export", "write a room's stored state (JSON) to a file or stdout")
    export.add_argument("room", metavar="ROOM")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(handler=_export)
    imp = command("import", "replace a room's stored state (daemon stopped), new epoch")
    imp.add_argument("room", metavar="ROOM")
    imp.add_argument("file", metavar="FILE")
    imp.set_defaults(handler=_import)
    reset = command("reset", "start a room's next session (daemon stopped): new epoch, zeros")
    reset.add_argument("room", metavar="ROOM")
    reset.set_defaults(handler=_reset)
    parser.set_defaults(handler=_missing_action)


def _missing_action(args: argparse.Namespace) -> int:
    raise UsageError("meksd state needs an action: list, export, import or reset")


# --------------------------------------------------------------------------- actions


def _list(args: argparse.Namespace) -> int:
    path = _store(args)
    with _open(path, readonly=True) as db:
        rooms, history = db.rooms(), db.history()
    print(f"store {path}: {len(rooms)} room(s), {len(history)} archived state(s)")
    archived: dict[str, int] = {}
    for row in history:
        archived[row.room_id] = archived.get(row.room_id, 0) + 1
    if rooms:
        print(f"{'room':<20} {'epoch':<20} {'seq':>8} {'saved (UTC)':<20} {'stop':<8} history")
    for room in rooms:
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(room.saved_at))
        stop = "clean" if room.clean else "unclean"
        print(
            f"{room.room_id:<20} {room.epoch:<20} {room.seq:>8} {saved:<20} {stop:<8} "
            f"{archived.get(room.room_id, 0)}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    path = _store(args)
    with _open(path, readonly=True) as db:
        stored = _room(db, args.room, path)
    state, seq = _decode(stored, path)
    data = state_to_bytes(state, seq) + b"\n"
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as exc:
            raise StoreError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    print(
        f"meksd: exported room {args.room!r} (epoch {state.epoch}, seq {seq}, "
        f"{len(state.leaderboard)} gifters, {state.totals.diamonds} diamonds)"
        + (f" to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        state, _ = state_from_bytes(data)
    except PersistError as exc:
        raise DataError(f"{args.file}: {exc}") from None
    if state.room_id != args.room:
        raise DataError(f"{args.file} holds room {state.room_id!r}, not {args.room!r}")
    state = attrs.evolve(state, epoch=_new_epoch())
    path = _store(args)
    with _locked(path), _open(path, readonly=False) as db:
        replaced = db.archive(args.room, "import", replace=_row(state))
    print(
        f"meksd: imported room {args.room!r} from {args.file} into {path}: epoch "
        f"{state.epoch}, {state.totals.diamonds} diamonds"
        + ("; the state it replaced is kept in the store's history" if replaced else ""),
        file=sys.stderr,
    )
    return 0


def _reset(args: argparse.Namespace) -> int:
    path = _store(args)
    if not path.exists():
        raise InputError(f"no store at {path}")
    with _locked(path), _open(path, readonly=False) as db:
        stored = _room(db, args.room, path)
        try:
            old, _ = stored.decode()
        except PersistError:
            # Unreadable: keep it in the history; the room starts anew at the next start.
            db.archive(args.room, "reset (unreadable)")
            new = None
        else:
            new = start_session(old, _new_epoch())
            db.archive(args.room, "reset", replace=_row(new))
    what = f"epoch {new.epoch} starts at the next start" if new else "it starts anew"
    print(
        f"meksd: reset room {args.room!r} in {path}: {what}; the old state is kept in "
        "the store's history",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------- helpers


def _store(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    storage = load_config(args.config).storage if args.config else StorageConfig()
    if not storage.enabled:
        raise StoreError(f"{args.config}: [storage] enabled = false; name the file with --store")
    return store_path(storage)


@contextmanager
def _open(path: Path, *, readonly: bool) -> Iterator[StoreDB]:
    if readonly and not path.exists():
        raise InputError(f"no store at {path}")
    try:
        db = StoreDB.open(path, readonly=readonly)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot use the store {path}: {exc}") from None
    try:
        yield db
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: {exc}") from None
    finally:
        db.close()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = StoreLock(path)
    try:
        lock.acquire()
    except OSError as exc:
        raise StoreError(f"cannot lock the store {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()


def _room(db: StoreDB, room_id: str, path: Path) -> StoredRoom:
    stored = db.room(room_id)
    if stored is None:
        raise InputError(f"no stored state for room {room_id!r} in {path}")
    return stored


def _decode(stored: StoredRoom, path: Path) -> tuple[RoomState, int]:
    try:
        return stored.decode()
    except PersistError as exc:
        raise StoreError(
            f"the stored state of room {stored.room_id!r} in {path} is unreadable: {exc}"
        ) from None


def _new_epoch() -> str:
    from meksd.runtime.room import new_epoch  # the daemon's naming; imports trio

    return new_epoch()


def _row(state: RoomState) -> RoomWrite:
    return RoomWrite.whole(state, 0)
