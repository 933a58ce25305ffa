"""``meksd state list|export|import|reset`` on real store files.

One round trip goes through real subprocesses; the rest call ``meksd.cli.main`` in
this process (each subprocess costs half a second of interpreter start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from meksd.cli import main
from meksd.config import parse_config
from meksd.core.persist import state_from_bytes, state_to_bytes
from meksd.core.reduce import new_room, reduce
from meksd.model.events import ChatMessage, GiftSent, User
from meksd.model.state import RoomConfig, RoomState
from meksd.runtime.app import App
from meksd.runtime.storedb import RoomWrite, StoreDB, StoreLock

ROOT = Path(__file__).parent.parent


def meksd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "meksd", *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


class Result:
    """What one ``meksd`` command line did."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes]) -> Callable[..., Result]:
    """``meksd ARGS`` run by ``meksd.cli.main`` in this process."""

    def run(*args: str) -> Result:
        code = main(list(args))
        out, err = capsysbinary.readouterr()
        return Result(code, out, err)

    return run


def sample_state(room: str = "a", epoch: str = "e1") -> RoomState:
    """A room with gifters, an open streak, chat and remembered msgIds."""
    user = User("7", "rosa", "Rosa")
    events = [
        GiftSent("g1", user, "5655", "Rose", 0, 3, False, "", 10, 0.0, 1),
        GiftSent("g2", User("8"), "5655", "Rose", 1, 2, False, "grp", 1, 0.0, 2),
        ChatMessage("c1", user, "hello", 0.0, 3),
    ]
    state, _ = reduce(new_room(room, epoch, RoomConfig()), events)
    return state


def write_store(path: Path, state: RoomState, seq: int) -> bytes:
    db = StoreDB.open(path)
    try:
        db.write([RoomWrite.whole(state, seq)], clean=True)
    finally:
        db.close()
    return state_to_bytes(state, seq)


def read_store(path: Path) -> tuple[dict[str, tuple[RoomState, int, bool]], list[str]]:
    db = StoreDB.open(path, readonly=True)
    try:
        rooms = {r.room_id: (*r.decode(), r.clean) for r in db.rooms()}
        return rooms, [h.reason for h in db.history()]
    finally:
        db.close()


def test_export_import_round_trip(tmp_path: Path) -> None:
    """export writes the stored document; import puts the same state into another
    store under a new epoch at seq 0, marked resumable, the replaced one in history."""
    state = sample_state()
    source, target, out = tmp_path / "one.db", tmp_path / "two.db", tmp_path / "a.json"
    data = write_store(source, state, 42)
    result = meksd("state", "export", "a", "--store", str(source), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == data + b"\n"
    assert b"exported room 'a' (epoch e1, seq 42, 1 gifters, 30 diamonds)" in result.stderr

    write_store(target, sample_state(epoch="older"), 7)
    result = meksd("state", "import", "a", str(out), "--store", str(target))
    assert result.returncode == 0, result.stderr
    rooms, history = read_store(target)
    imported, seq, clean = rooms["a"]
    assert imported.epoch not in ("e1", "older")
    assert attrs.evolve(imported, epoch="e1") == state
    assert (seq, clean) == (0, True)
    assert history == ["import"]

    again = meksd("state", "export", "a", "--store", str(target))
    assert again.returncode == 0, again.stderr
    assert state_from_bytes(again.stdout) == (imported, 0)


async def test_an_imported_state_is_what_the_daemon_starts_with(tmp_path: Path) -> None:
    """After an import, the daemon restores exactly that state and keeps its epoch."""
    state = sample_state()
    store, out = tmp_path / "s.db", tmp_path / "a.json"
    out.write_bytes(state_to_bytes(state, 5))
    result = await trio.run_process(
        [sys.executable, "-m", "meksd", "state", "import", "a", str(out), "--store", str(store)],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    imported, _, _ = read_store(store)[0]["a"]
    config = parse_config(
        f'[server]\nws_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
        f'[storage]\npath = "{store}"\n[[rooms]]\nid = "a"\n'
        '[[rooms.sources]]\nkind = "simulator"\nrate = 0\nburst_s = 0\nbattles = false\n'
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            app: App = await nursery.start(App(config).run)
            feed = app.rooms["a"].feed
            # The open streak's last event is from 1970 (received_at 0): restored with
            # its age, it times out at once and counts its 2 diamonds as seq 1.
            while feed.state.totals.diamonds != state.totals.diamonds + 2:
                await trio.sleep(0.01)
            assert (feed.epoch, feed.seq) == (imported.epoch, 1)
            assert feed.state.dedup == state.dedup
            nursery.cancel_scope.cancel()


def test_reset_starts_a_new_session_and_keeps_the_old_one(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """reset: a new epoch with zero counts and the msgId memory kept; the old state
    goes to the history."""
    state = sample_state()
    store = tmp_path / "s.db"
    write_store(store, state, 9)
    result = cli("state", "reset", "a", "--store", str(store))
    assert result.returncode == 0, result.stderr
    rooms, history = read_store(store)
    new, seq, _ = rooms["a"]
    assert new.epoch != state.epoch
    assert seq == 0
    assert new.totals.diamonds == 0
    assert not new.leaderboard
    assert new.dedup == state.dedup
    assert history == ["reset"]
    listing = cli("state", "list", "--store", str(store))
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.decode().splitlines() if line.startswith("a "))
    assert row.split()[1:3] == [new.epoch, "0"]
    assert row.split()[-1] == "1"


def test_changing_commands_refuse_while_a_daemon_holds_the_store(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """import and reset exit 75 naming the holder's pid; export still reads."""
    store, out = tmp_path / "s.db", tmp_path / "a.json"
    write_store(store, sample_state(), 3)
    out.write_bytes(state_to_bytes(sample_state(), 3))
    lock = StoreLock(store)
    lock.acquire()
    try:
        for args in (["import", "a", str(out)], ["reset", "a"]):
            result = cli("state", *args, "--store", str(store))
            assert result.returncode == 75, result.stderr
            assert f"in use by another meksd (pid {os.getpid()})".encode() in result.stderr
        assert cli("state", "export", "a", "--store", str(store)).returncode == 0
    finally:
        lock.release()
    assert read_store(store)[1] == []


def test_bad_inputs_exit_with_clear_messages(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """A file that is not a state exits 65 with the path of the problem; a missing
    file, store or room exits 66."""
    store, bad, other = tmp_path / "s.db", tmp_path / "bad.json", tmp_path / "b.json"
    write_store(store, sample_state(), 1)
    doc = json.loads(state_to_bytes(sample_state(), 1))
    doc["state"]["totals"]["gifts"] = -0.5
    bad.write_text(json.dumps(doc))
    other.write_bytes(state_to_bytes(sample_state(room="b"), 1))
    cases = [
        (["import", "a", str(bad)], 65, f"meksd: {bad}: expected int @ $.state.totals.gifts"),
        (["import", "a", str(other)], 65, f"meksd: {other} holds room 'b', not 'a'"),
        (["import", "a", str(tmp_path / "none")], 66, "cannot read"),
        (["export", "zz"], 66, f"meksd: no stored state for room 'zz' in {store}"),
        (["reset", "zz"], 66, "no stored state for room 'zz'"),
    ]
    for args, code, message in cases:
        result = cli("state", *args, "--store", str(store))
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr.decode(), (args, result.stderr)
    missing = cli("state", "export", "a", "--store", str(tmp_path / "nothing.db"))
    assert missing.returncode == 66
    assert b"no store at" in missing.stderr
    assert read_store(store)[1] == []


def test_the_store_is_found_through_the_config(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """--config finds the store by its [storage] path, relative to the config file."""
    store = tmp_path / "data" / "m.db"
    store.parent.mkdir()
    write_store(store, sample_state(), 1)
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[storage]\npath = "data/m.db"\n[[rooms]]\nid = "a"\n[[rooms.sources]]\nkind = "simulator"\n'
    )
    result = cli("state", "list", "--config", str(conf))
    assert result.returncode == 0, result.stderr
    assert f"store {store}: 1 room(s)".encode() in result.stdout


def test_run_refuses_a_store_held_by_another_daemon(tmp_path: Path) -> None:
    """`meksd run` on a store another process holds exits 75 with one clear line."""
    store = tmp_path / "s.db"
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[server]\nws_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
        f'[storage]\npath = "{store}"\n[[rooms]]\nid = "a"\n[[rooms.sources]]\nkind = "simulator"\n'
    )
    lock = StoreLock(store)
    lock.acquire()
    try:
        result = meksd("run", "--config", str(conf))
    finally:
        lock.release()
    assert result.returncode == 75, result.stderr
    assert result.stderr.decode().splitlines()[-1] == (
        f"meksd: store {store} is in use by another meksd (pid {os.getpid()})"
    )
