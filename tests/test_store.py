"""The store in a running app: restore across restarts, damaged files, write errors."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from meksd.config import Config, StorageConfig, parse_config
from meksd.core.persist import PartsWrite, state_to_bytes, state_to_parts
from meksd.core.reduce import new_room, reduce
from meksd.errors import StoreBusyError
from meksd.model.events import ChatMessage, User
from meksd.model.state import RoomConfig, RoomState
from meksd.runtime.app import App
from meksd.runtime.store import RoomStore
from meksd.runtime.storedb import SCHEMA_VERSION, RoomWrite, StoreDB, store_path
from tests.support import DashClient, open_dashboard, serve_feed

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_ms = 5
shutdown_grace_s = 1.0
[storage]
path = "{path}"
flush_ms = {flush}
[[rooms]]
id = "a"
chat_history = {chat}
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.05
backoff_max_s = 0.2
"""


def make_config(path: Path, port: int, *, flush: int = 20, chat: int = 50) -> Config:
    return parse_config(CONFIG.format(path=path, port=port, flush=flush, chat=chat))


def gift(msg: str, user: int, diamonds: int, **extra: Any) -> bytes:
    data = {"msgId": msg, "userId": user, "nickname": f"U{user}", "giftId": 1, "giftType": 0}
    data |= {"repeatCount": 1, "diamondCount": diamonds} | extra
    return orjson.dumps({"event": "gift", "data": data})


def chat(msg: str, text: str = "hi") -> bytes:
    return orjson.dumps({"event": "chat", "data": {"msgId": msg, "userId": 7, "comment": text}})


def gifts(prefix: str, n: int) -> tuple[list[bytes], int]:
    """``n`` single gifts with unique msgIds, and the diamonds they count."""
    payloads = [gift(f"{prefix}{i}", i % 7, i % 5 + 1) for i in range(n)]
    return payloads, sum(i % 5 + 1 for i in range(n))


@asynccontextmanager
async def running(config: Config, *, graceful: bool = True) -> AsyncIterator[App]:
    """An app on ``config``; stopped gracefully (final flush) or just cancelled."""
    async with trio.open_nursery() as nursery:
        app: App = await nursery.start(App(config).run)
        try:
            yield app
        finally:
            if graceful:
                with trio.fail_after(10):
                    await app.stop()
            nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def raw_row(room_id: str, epoch: str, seq: int, head: bytes) -> RoomWrite:
    """A room row holding ``head`` as it is (no parts), readable or not."""
    return RoomWrite(room_id, epoch, seq, PartsWrite(head, (), (), full=True))


def published(app: App) -> RoomState:
    return app.rooms["a"].feed.state


async def flushed(app: App) -> None:
    """Wait until the store has written the room's published (epoch, seq)."""
    assert app.store is not None
    feed = app.rooms["a"].feed
    await until(lambda: app.store is not None and app.store.written("a") == (feed.epoch, feed.seq))


def metrics(app: App) -> dict[str, float]:
    text = app.metrics.exposition().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    handler = logger.add(lambda m: records.append(dict(m.record["extra"], msg=m.record["message"])))
    try:
        yield records
    finally:
        logger.remove(handler)


# --------------------------------------------------------------------------- restarts


async def test_graceful_restart_keeps_epoch_and_seq_and_dashboards_resume_with_deltas(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """After a graceful stop, the room comes back with its counts, epoch and seq; a
    dashboard resuming with ``since`` gets only the new deltas, no snapshot."""
    store = tmp_path / "s.sqlite3"
    first, first_diamonds = gifts("a", 40)
    second, second_diamonds = gifts("b", 30)
    port1, _ = await serve_feed(first, nursery=nursery, chunk=10)
    go = trio.Event()
    port2, _ = await serve_feed(second, nursery=nursery, go=go)
    with trio.fail_after(20):
        async with running(make_config(store, port1)) as app:
            await until(lambda: published(app).totals.diamonds == first_diamonds)
            client = DashClient(f"ws://127.0.0.1:{app.dashboards.port}/ws")
            async with open_dashboard(client.url) as client.ws:
                await client.subscribe("a")
                feed = app.rooms["a"].feed
                await client.read_until(lambda: client.views["a"].seq == feed.seq)
            epoch, seq = feed.epoch, feed.seq
        view = client.views["a"]
        async with running(make_config(store, port2)) as app:
            feed = app.rooms["a"].feed
            assert (feed.epoch, feed.seq) == (epoch, seq)
            assert published(app).totals.diamonds == first_diamonds
            again = DashClient(f"ws://127.0.0.1:{app.dashboards.port}/ws")
            again.views["a"] = view
            async with open_dashboard(again.url) as again.ws:
                await again.subscribe("a", resume=True)
                go.set()
                total = first_diamonds + second_diamonds
                await again.read_until(lambda: (view.state or {})["totals"]["diamonds"] == total)
    assert view.snapshots == 1, "the resumed dashboard got a snapshot"
    assert view.epoch == epoch
    assert view.seq > seq


async def test_unclean_stop_restores_counts_under_a_new_epoch_without_double_counting(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """After a stop without the final flush, the room has its last flushed counts
    under a new epoch at seq 0; the feed re-sending its history counts nothing twice."""
    store = tmp_path / "s.sqlite3"
    history, diamonds = gifts("m", 60)
    fresh, fresh_diamonds = gifts("n", 10)
    port1, _ = await serve_feed(history, nursery=nursery, chunk=7)
    port2, _ = await serve_feed(history + fresh, nursery=nursery, chunk=7)
    with trio.fail_after(20):
        async with running(make_config(store, port1), graceful=False) as app:
            await until(lambda: published(app).totals.diamonds == diamonds)
            await flushed(app)
            epoch = app.rooms["a"].feed.epoch
        async with running(make_config(store, port2)) as app:
            feed = app.rooms["a"].feed
            assert feed.epoch != epoch
            assert feed.seq == 0
            assert published(app).totals.diamonds == diamonds
            await until(lambda: published(app).totals.diamonds >= diamonds + fresh_diamonds)
            await until(lambda: app.rooms["a"].counters.duplicates == len(history))
            assert published(app).totals.diamonds == diamonds + fresh_diamonds


async def test_streak_times_count_the_downtime(tmp_path: Path, nursery: trio.Nursery) -> None:
    """An open streak is restored with its age: after a short stop it stays open; after
    a stop longer than streak_timeout_s it is closed (and counted) at once."""
    store = tmp_path / "s.sqlite3"
    streak = [
        gift(f"s{i}", 9, 2, giftType=1, repeatCount=i, repeatEnd=False, groupId="g")
        for i in (1, 2, 3)
    ]
    port, _ = await serve_feed(streak, nursery=nursery)
    idle, _ = await serve_feed([], nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            await until(lambda: [s.repeat_count for s in published(app).streaks.values()] == [3])
        async with running(make_config(store, idle)) as app:
            assert len(published(app).streaks) == 1
            assert published(app).totals.diamonds == 0
        restart = App(make_config(store, idle))
        assert restart.store is not None
        restart.store.wall_clock = lambda: time.time() + 60  # a minute of downtime
        async with trio.open_nursery() as inner:
            await inner.start(restart.run)
            await until(lambda: restart.rooms["a"].feed.state.totals.diamonds == 6)
            assert not restart.rooms["a"].feed.state.streaks
            inner.cancel_scope.cancel()


async def test_settings_that_change_the_snapshot_start_a_new_epoch(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A room restarted with a shorter chat history keeps its counts under a new epoch
    (its dashboards must resync), as a reload does."""
    store = tmp_path / "s.sqlite3"
    port, _ = await serve_feed([chat(f"c{i}") for i in range(8)], nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port, chat=50)) as app:
            await until(lambda: published(app).totals.comments == 8)
            epoch = app.rooms["a"].feed.epoch
        async with running(make_config(store, port, chat=3)) as app:
            state = published(app)
            assert state.epoch != epoch
            assert state.totals.comments >= 8
            assert [c.msg_id for c in state.chat] == ["c5", "c6", "c7"]


async def test_a_room_removed_by_reload_comes_back_where_it_was(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A room removed by a reload keeps its final state; added back, it resumes at the
    same epoch and seq with the same counts."""
    store = tmp_path / "s.sqlite3"
    payloads, diamonds = gifts("r", 20)
    port, _ = await serve_feed(payloads, nursery=nursery)
    config = make_config(store, port)
    other = parse_config(
        CONFIG.format(path=store, port=port, flush=20, chat=50).replace('id = "a"', 'id = "b"')
    )
    with trio.fail_after(20):
        async with running(config) as app:
            await until(lambda: published(app).totals.diamonds == diamonds)
            before = app.rooms["a"].feed
            await app.reload(other)
            assert "a" not in app.rooms
            await app.reload(config)
            after = app.rooms["a"].feed
            assert (after.epoch, after.seq) == (before.epoch, before.seq)
            assert after.state.totals == before.state.totals


# --------------------------------------------------------------------------- damage


async def test_a_damaged_store_file_is_moved_aside_and_rooms_start_new_epochs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A store file that is not SQLite is renamed with a timestamp (kept, byte for byte),
    logged, and a new store is created; the room starts empty and is written there."""
    store = tmp_path / "s.sqlite3"
    junk = b"this is not a database, just junk " * 200
    store.write_bytes(junk)
    payloads, diamonds = gifts("d", 5)
    port, _ = await serve_feed(payloads, nursery=nursery)
    with captured_logs() as logs, trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            moved = [p for p in os.listdir(tmp_path) if p.startswith("s.sqlite3.corrupt-")]
            moved = [tmp_path / p for p in moved]
            assert len(moved) == 1
            assert moved[0].read_bytes() == junk
            assert metrics(app)["meksd_store_moved_aside_total"] == 1
            await until(lambda: published(app).totals.diamonds == diamonds)
    events = [r for r in logs if r.get("event") == "store_moved_aside"]
    assert len(events) == 1
    assert str(moved[0]) in events[0]["msg"]
    db = StoreDB.open(store, readonly=True)
    try:
        room = db.room("a")
    finally:
        db.close()
    assert room is not None
    assert room.decode()[0].totals.diamonds == diamonds


async def test_an_unreadable_room_row_goes_to_the_history(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A stored room whose state does not decode is moved to the history table, not
    deleted, and the room starts anew."""
    store = tmp_path / "s.sqlite3"
    db = StoreDB.open(store)
    db.write([raw_row("a", "old-epoch", 9, b'{"format": "meksd.room-state", "version": 1}')])
    db.close()
    port, _ = await serve_feed([], nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            assert app.rooms["a"].feed.epoch != "old-epoch"
            assert published(app).totals.diamonds == 0
    db = StoreDB.open(store, readonly=True)
    try:
        history = db.history("a")
    finally:
        db.close()
    assert [(h.epoch, h.seq) for h in history] == [("old-epoch", 9)]
    assert history[0].reason.startswith("unreadable: ")
    assert "$.seq" in history[0].reason


async def test_write_errors_keep_serving_count_and_log_once_then_recover(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """While every write fails (a full disk), the room goes on counting and publishing;
    the failures are counted and logged once; the first good write catches up."""
    store = tmp_path / "s.sqlite3"
    go = trio.Event()
    payloads, diamonds = gifts("w", 50)
    port, _ = await serve_feed(payloads, nursery=nursery, chunk=5, pause_s=0.02, go=go)

    def disk_full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with captured_logs() as logs, trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            assert app.store is not None
            await flushed(app)  # the empty room is written; nothing is in flight now
            app.store.write_fault = disk_full
            before = metrics(app)["meksd_store_last_success_timestamp"]
            assert before > 0
            go.set()
            await until(lambda: published(app).totals.diamonds == diamonds)
            await until(lambda: metrics(app)["meksd_store_write_errors_total"] >= 3)
            assert metrics(app)["meksd_store_last_success_timestamp"] == before
            assert app.store.written("a") != (app.rooms["a"].feed.epoch, app.rooms["a"].feed.seq)
            app.store.write_fault = None
            await flushed(app)
            assert metrics(app)["meksd_store_last_success_timestamp"] > before
    failures = [r for r in logs if r.get("event") == "store_write_failed"]
    assert len(failures) == 1
    assert "database or disk is full" in failures[0]["msg"]


def _mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


async def test_a_really_full_disk_keeps_the_daemon_serving(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """On a 256 KiB filesystem the store soon fails with ENOSPC; every event is still
    counted and published, and the failures show in the metrics. (Needs root.)"""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root")
    try:
        payloads = [chat(f"message-{i:06}-{'x' * 40}", "y" * 200) for i in range(1500)]
        port, _ = await serve_feed(payloads, nursery=nursery, chunk=50)
        with trio.fail_after(30):
            async with running(make_config(disk / "s.sqlite3", port)) as app:
                await until(lambda: published(app).totals.comments == len(payloads))
                await until(lambda: metrics(app)["meksd_store_write_errors_total"] > 0)
                assert metrics(app)["meksd_store_writes_total"] > 0  # it worked, then filled
                assert metrics(app)["meksd_store_available"] == 1
    finally:
        await trio.run_process(["umount", "-l", str(disk)], check=False)


async def test_a_store_that_appears_later_is_used_and_its_old_rows_kept(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A store that cannot be opened at start does not stop the daemon; once it can be
    opened, the rows it held go to the history (the rooms had started anew) and the
    rooms are written."""
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory yet")  # the store's directory cannot be made
    store = blocker / "s.sqlite3"
    payloads, diamonds = gifts("u", 5)
    port, _ = await serve_feed(payloads, nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            assert metrics(app)["meksd_store_available"] == 0
            await until(lambda: published(app).totals.diamonds == diamonds)
            await until(lambda: metrics(app)["meksd_store_write_errors_total"] >= 2)
            os.unlink(blocker)  # the volume is mounted, with an older store on it
            os.mkdir(blocker)
            old = StoreDB.open(store)
            old.write([raw_row("a", "older", 3, b"{}")])
            old.close()
            await flushed(app)
            assert metrics(app)["meksd_store_available"] == 1
    db = StoreDB.open(store, readonly=True)
    try:
        history, room = db.history("a"), db.room("a")
    finally:
        db.close()
    assert [(h.epoch, h.reason) for h in history] == [
        ("older", "replaced: the store was unavailable at start")
    ]
    assert room is not None
    assert room.decode()[0].totals.diamonds == diamonds


# --------------------------------------------------------------------------- lifecycle


async def test_a_second_app_on_the_same_store_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Two daemons must not write one store: the second fails to start, naming the pid."""
    store = tmp_path / "s.sqlite3"
    port, _ = await serve_feed([], nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)):
            with pytest.RaisesGroup(
                pytest.RaisesExc(StoreBusyError, match=f"pid {os.getpid()}"), flatten_subgroups=True
            ):
                async with trio.open_nursery() as inner:
                    await inner.start(App(make_config(store, port)).run)


async def test_storage_can_be_disabled(tmp_path: Path, nursery: trio.Nursery) -> None:
    """With ``enabled = false`` there is no store and nothing is written."""
    port, _ = await serve_feed([], nursery=nursery)
    text = CONFIG.format(path=tmp_path / "s.sqlite3", port=port, flush=20, chat=5)
    config = parse_config(text.replace("[storage]", "[storage]\nenabled = false"))
    async with running(config) as app:
        assert app.store is None
        assert not any(name.startswith("meksd_store_") for name in metrics(app))
    assert os.listdir(tmp_path) == []


async def test_session_reset_keeps_the_ended_session_in_the_history(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A room's ended session (the session.reset hook) is written to the history."""
    store = tmp_path / "s.sqlite3"
    payloads, diamonds = gifts("h", 5)
    port, _ = await serve_feed(payloads, nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            await until(lambda: published(app).totals.diamonds == diamonds)
            for hook in app.rooms["a"].session_hooks:
                hook(published(app))
            assert app.store is not None
            await until(lambda: not app.store._ended)  # type: ignore[union-attr]
    db = StoreDB.open(store, readonly=True)
    try:
        history = db.history("a")
    finally:
        db.close()
    assert [h.reason for h in history] == ["session.reset"]


def test_default_store_paths() -> None:
    """systemd's StateDirectory wins, then XDG_STATE_HOME, then ~/.local/state."""
    default = StorageConfig()
    assert store_path(default, {"STATE_DIRECTORY": "/var/lib/meksd:/x"}) == Path(
        "/var/lib/meksd/meksd.sqlite3"
    )
    assert store_path(default, {"XDG_STATE_HOME": "/s"}) == Path("/s/meksd/meksd.sqlite3")
    home = Path.home() / ".local" / "state" / "meksd" / "meksd.sqlite3"
    assert store_path(default, {"XDG_STATE_HOME": "relative"}) == home
    assert store_path(default, {}) == home
    assert store_path(StorageConfig(path="/data/m.db"), {"STATE_DIRECTORY": "/v"}) == Path(
        "/data/m.db"
    )


def test_storage_config_is_validated(tmp_path: Path) -> None:
    """[storage] keys are typed and checked; a relative path is the config's sibling."""
    room = '[[rooms]]\nid = "a"\n[[rooms.sources]]\nkind = "simulator"\n'
    config = parse_config('[storage]\npath = "st/m.db"\n' + room, base_dir=tmp_path)
    assert config.storage == StorageConfig(path=str(tmp_path / "st" / "m.db"))
    for text, message in [
        ("flush_ms = 0", "must be > 0 @ $.storage.flush_ms"),
        (
            'path = ""',
            "must not be empty (to run without a store: enabled = false) @ $.storage.path",
        ),
        ('enabled = "false"', "expected bool @ $.storage.enabled"),
        ("flush_ms = 2.5", "expected int @ $.storage.flush_ms"),
        ("flushms = 1", "unknown key 'flushms' @ $.storage"),
    ]:
        with pytest.raises(
            Exception, match=message.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")
        ):
            parse_config(f"[storage]\n{text}\n" + room)


# --------------------------------------------------------------------------- incremental


async def test_flushes_write_only_what_changed(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Once a room with thousands of remembered msgIds is written, the flush after one
    more chat message writes a small fraction of the whole document; the store reads
    back exactly the final state."""
    store = tmp_path / "s.sqlite3"
    history, diamonds = gifts("a-long-message-id-", 3000)  # 2 sealed msgId segments
    port, _ = await serve_feed(history, nursery=nursery, chunk=500)
    with trio.fail_after(30):
        async with running(make_config(store, port)) as app:
            room = app.rooms["a"]
            await until(lambda: published(app).totals.diamonds == diamonds)
            await flushed(app)
            first = metrics(app)["meksd_store_written_bytes_total"]
            whole = len(state_to_bytes(published(app), room.feed.seq))
            assert first >= whole, "the first write of the room is whole"
            writes = metrics(app)["meksd_store_writes_total"]
            assert room.inbox is not None
            room.inbox.send_nowait(ChatMessage("one-more", User("7"), "hi", trio.current_time(), 0))
            await until(lambda: published(app).totals.comments == 1)
            await flushed(app)
            assert metrics(app)["meksd_store_writes_total"] == writes + 1
            step = metrics(app)["meksd_store_written_bytes_total"] - first
            assert 0 < step < whole / 4, (step, whole)
            await app.stop()
            final = room.owned.state
    db = StoreDB.open(store, readonly=True)
    try:
        stored = db.room("a")
    finally:
        db.close()
    assert stored is not None
    state, _ = stored.decode()
    assert (state.totals, state.leaderboard, state.dedup) == (
        final.totals,
        final.leaderboard,
        final.dedup,
    )


def test_the_open_msgid_segment_is_stored_in_pieces_dropped_when_it_seals(
    tmp_path: Path,
) -> None:
    """Through SQLite: each flush adds a piece with the open segment's new ids (a few
    dozen bytes, not the segment again); sealing writes it whole and deletes its
    pieces; the room reads back exactly after every flush."""
    db = StoreDB.open(tmp_path / "s.sqlite3")
    try:
        state = new_room("a", "e", RoomConfig(dedup_window=16 * 100))  # segments of 100
        base: RoomState | None = None
        sizes = []
        for n in range(1, 25):  # 8 ids a flush: segment 0 seals during flush 13
            ids = [f"m{(n - 1) * 8 + i}" for i in range(8)]
            state, _ = reduce(state, [ChatMessage(m, User("u"), "hi", 0.0, 0) for m in ids])
            write = RoomWrite("a", "e", n, state_to_parts(state, n, base=base))
            db.write([write])
            sizes.append(sum(len(v) for k, _, v in write.parts.upserts if k == "msgids"))
            base = state
            stored = db.room("a")
            assert stored is not None
            assert stored.decode() == (state, n)
        keys = sorted(key for kind, key, _ in db.room("a").parts if kind == "msgids")  # type: ignore[union-attr]
        # 0 sealed, written whole; 1 opened in flush 13 with 4 ids, then a piece a flush
        assert keys == sorted(["0", "1", *[f"1.{4 + 8 * i}" for i in range(11)]])
        assert max(sizes[1:12]) < 100, "a flush while the segment fills writes its new ids"
    finally:
        db.close()


def test_a_schema_2_store_reads_as_is_and_is_marked_3_when_opened_for_writing(
    tmp_path: Path,
) -> None:
    """Schema 3 adds no table, only msgId pieces: a schema-2 file (whole segments) reads
    unchanged, stays 2 when opened read-only, and is marked 3 by a writable open."""
    path = tmp_path / "s.sqlite3"
    state = new_room("a", "e", RoomConfig(dedup_window=32))
    state, _ = reduce(state, [ChatMessage(f"m{i}", User("u"), "hi", 0.0, 0) for i in range(5)])
    db = StoreDB.open(path)
    db.write([RoomWrite("a", "e", 1, state_to_parts(state, 1))])
    db.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    old = StoreDB.open(path, readonly=True)
    try:
        assert old.schema == "2"
        stored = old.room("a")
        assert stored is not None and stored.decode() == (state, 1)
    finally:
        old.close()
    db = StoreDB.open(path)
    try:
        assert db.schema == str(SCHEMA_VERSION) == "3"
        stored = db.room("a")
        assert stored is not None and stored.decode() == (state, 1)
    finally:
        db.close()


async def test_a_version_1_store_is_read_and_upgraded(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A store file written by schema 1 (whole documents, two msgId generations)
    restores its room; the daemon upgrades the file and rewrites the room as a head and
    parts, which the next start reads again."""
    store = tmp_path / "s.sqlite3"
    history, diamonds = gifts("m", 40)
    port, _ = await serve_feed(history, nursery=nursery)
    with trio.fail_after(20):
        async with running(make_config(store, port)) as app:
            await until(lambda: published(app).totals.diamonds == diamonds)
            await app.stop()
            state, seq = app.rooms["a"].owned.state, app.rooms["a"].feed.seq
    doc = orjson.loads(state_to_bytes(state, seq))
    doc["version"] = 1
    doc["state"]["dedup"] = {
        "capacity": state.dedup.capacity,
        "current": sorted(state.dedup.current),
        "previous": [],
    }
    store.unlink()
    conn = sqlite3.connect(store)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema', '1');"
        "CREATE TABLE rooms (room_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT "
        "NULL, clean INTEGER NOT NULL, saved_at REAL NOT NULL, state BLOB NOT NULL);"
        "CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, "
        "epoch TEXT NOT NULL, seq INTEGER NOT NULL, saved_at REAL NOT NULL, archived_at REAL "
        "NOT NULL, reason TEXT NOT NULL, state BLOB NOT NULL);"
    )
    conn.execute(
        "INSERT INTO rooms VALUES ('a', ?, ?, 1, 0, ?)", (state.epoch, seq, orjson.dumps(doc))
    )
    conn.commit()
    conn.close()
    old = StoreDB.open(store, readonly=True)
    assert old.schema == "1"
    assert old.room("a") is not None
    old.close()
    port2, _ = await serve_feed(history, nursery=nursery)  # the feed re-sends it all
    for _ in range(2):
        with trio.fail_after(20):
            async with running(make_config(store, port2)) as app:
                assert published(app).totals.diamonds == diamonds
                assert app.rooms["a"].feed.epoch == state.epoch, "a clean v1 row resumes"
                await until(lambda: app.rooms["a"].counters.duplicates >= len(history))
                assert published(app).totals.diamonds == diamonds, "counted twice"
        db = StoreDB.open(store, readonly=True)
        try:
            assert db.schema == str(SCHEMA_VERSION)
            stored = db.room("a")
            assert stored is not None and stored.parts, "rewritten as a head and parts"
        finally:
            db.close()


async def test_flushes_keep_to_the_grid_and_follow_at_once_when_one_overran(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Flushes start at the multiples of flush_s (the instants the rooms' failover
    checks use); a flush that took longer than flush_s is followed at once, not at the
    next instant (storage.md: the bound is then the length of a flush)."""
    store = RoomStore(tmp_path / "grid.sqlite3", flush_s=0.25, rooms=list)
    lengths = iter([0.05, 0.4, 0.05])
    starts: list[float] = []

    async def timed_flush(*, final: bool = False) -> bool:
        starts.append(trio.current_time())
        await trio.sleep(next(lengths, 0.05))
        return True

    store.flush = timed_flush  # type: ignore[method-assign]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            autojump_clock.autojump_threshold = math.inf  # the file opens in a thread
            await nursery.start(store.run)
            autojump_clock.autojump_threshold = 0
            while len(starts) < 4:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    first = starts[0]
    assert first / 0.25 == pytest.approx(round(first / 0.25))
    assert starts == pytest.approx([first, first + 0.25, first + 0.65, first + 0.75])
