"""The crash bound, on the real daemon: kill -9 at random moments, restart, re-send.

A fake upstream feed (in this test process) sends gifts in bursts; on every connect
it first re-sends its last ``RESEND`` events, as real feeds replay recent history.
``meksd run`` (a real subprocess, store on disk) is killed with SIGKILL at random
moments and started again on the same store. A dashboard records every total the
daemon published. The bound checked at each restart, before the feed sends
anything: the restored total is at least what the daemon had published
``flush_ms`` (plus scheduling slack) before the kill, and at most what the feed
had sent. At the end, after the re-sends, the total is exactly the feed's counted
total: the restored msgId memory drops what was already counted.
"""

from __future__ import annotations

import bisect
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from tests.support import DashClient, open_dashboard

FLUSH_MS = 100
SLACK_S = 0.4
"""Added to flush_ms for the lower bound: a write's own time and a loaded machine."""
RESEND = 600
"""Events the feed re-sends on every connect (more than a loss window can hold)."""
KILLS = 4

CONFIG = """
[server]
ws_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
tick_ms = 16
shutdown_grace_s = 1.0
[storage]
path = "{store}"
flush_ms = {flush}
[[rooms]]
id = "live"
streak_timeout_s = 60.0
[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:{port}/feed"
backoff_initial_s = 0.05
backoff_max_s = 0.2
"""


@attrs.define
class Sent:
    at: float
    msg_id: str
    value: int
    """Diamonds this msgId counts (the first time it arrives)."""
    payload: bytes


class Feed:
    """Generates gifts (singles and streaks that end), remembers what it sent."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sent: list[Sent] = []
        self.queue: list[Sent] = []
        self.next_msg = 0
        self.release = trio.Event()
        self.active = False
        self.times: list[float] = []
        self.truths: list[int] = []
        self._seen: set[str] = set()
        self._truth = 0

    def _gift(self, value: int, **data: Any) -> Sent:
        self.next_msg += 1
        msg = f"m{self.next_msg}"
        payload = orjson.dumps({"event": "gift", "data": {"msgId": msg, **data}})
        return Sent(0.0, msg, value, payload)

    def _refill(self) -> None:
        rng = self.rng
        user = rng.randrange(40)
        who = {"userId": user, "nickname": f"U{user}", "giftId": rng.choice([1, 2, 3])}
        diamonds = rng.choice([1, 5, 99])
        if rng.random() < 0.7:
            count = rng.randint(1, 3)
            self.queue.append(
                self._gift(
                    diamonds * count, **who, giftType=0, repeatCount=count, diamondCount=diamonds
                )
            )
            return
        group = f"g{self.next_msg}"
        total = rng.randint(1, 5)
        for k in range(1, total + 1):
            self.queue.append(
                self._gift(
                    0,
                    **who,
                    giftType=1,
                    repeatCount=k,
                    repeatEnd=False,
                    groupId=group,
                    diamondCount=diamonds,
                )
            )
        self.queue.append(
            self._gift(
                diamonds * total,
                **who,
                giftType=1,
                repeatCount=total,
                repeatEnd=True,
                groupId=group,
                diamondCount=diamonds,
            )
        )

    def _note(self, item: Sent) -> None:
        """Record ``item`` as sent now (before it is written to the socket)."""
        item = attrs.evolve(item, at=trio.current_time())
        if item.msg_id not in self._seen:
            self._seen.add(item.msg_id)
            self._truth += item.value
        self.sent.append(item)
        self.times.append(item.at)
        self.truths.append(self._truth)

    def truth(self, at: float | None = None) -> int:
        """Diamonds the daemon should count of everything sent (by ``at``)."""
        if at is None:
            return self._truth
        i = bisect.bisect_right(self.times, at)
        return self.truths[i - 1] if i else 0

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await self.release.wait()
            for item in self.sent[-RESEND:]:
                if not self.active:
                    return
                self._note(item)
                await ws.send_message(item.payload.decode())
            while self.active:
                for _ in range(self.rng.randint(1, 20)):
                    if not self.queue:
                        self._refill()
                    item = self.queue.pop(0)
                    if self.rng.random() < 0.02 and self.sent:  # a feed's duplicate
                        item = self.rng.choice(self.sent[-50:])
                    self._note(item)
                    await ws.send_message(item.payload.decode())
                await trio.sleep(self.rng.uniform(0.01, 0.03))
        except ConnectionClosed:
            pass


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[tuple[trio.Process, int]]:
    """``meksd run --config`` as a subprocess; yields it and its dashboard port."""
    command = [sys.executable, "-m", "meksd", "run", "--config", str(config)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
        )
        assert process.stderr is not None
        buffer = b""
        port = None
        while port is None:
            chunk = await process.stderr.receive_some()
            assert chunk, buffer.decode()
            buffer += chunk
            for line in buffer.splitlines():
                if b'"event":"ready"' in line:
                    port = orjson.loads(line[line.index(b"{") :])["ws_port"]

        async def drain() -> None:
            assert process.stderr is not None
            while await process.stderr.receive_some():
                pass

        nursery.start_soon(drain)
        try:
            yield process, port
        finally:
            if process.returncode is None:
                process.kill()


class Watcher:
    """A dashboard that records every total the daemon published, with its time."""

    def __init__(self, port: int, feed: Feed) -> None:
        self.client = DashClient(f"ws://127.0.0.1:{port}/ws")
        self.feed = feed
        self.times: list[float] = []
        self.totals: list[int] = []

    @property
    def diamonds(self) -> int:
        state = self.client.views["live"].state
        assert state is not None
        return int(state["totals"]["diamonds"])

    async def connect(self, *, task_status: trio.TaskStatus[trio.Event]) -> None:
        """Subscribe; report started once the snapshot is in; record until closed."""
        client = self.client
        async with open_dashboard(client.url) as client.ws:
            await client.subscribe("live")
            await client.read_until(lambda: client.views["live"].state is not None)
            done = trio.Event()
            task_status.started(done)
            try:
                while True:
                    client.take(await client.ws.get_message())
                    now = trio.current_time()
                    assert self.diamonds <= self.feed.truth(now), "counted more than was sent"
                    self.times.append(now)
                    self.totals.append(self.diamonds)
            except ConnectionClosed:
                pass
            finally:
                done.set()

    def published_by(self, at: float) -> int:
        """The highest total published by ``at`` (0 before any)."""
        i = bisect.bisect_right(self.times, at)
        return max(self.totals[:i], default=0)


async def test_kill_9_loses_at_most_the_last_flush_and_never_counts_twice(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """kill -9 at random moments: each restart restores at least what was published
    flush_ms (+ slack) before the kill and at most what was sent; after the feed
    re-sends its history, the total is exactly the feed's counted total."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    feed = Feed(rng)
    server = await nursery.start(serve_websocket, feed.handler, "127.0.0.1", 0, None)
    config = tmp_path / "meksd.toml"
    config.write_text(CONFIG.format(store=tmp_path / "store.db", flush=FLUSH_MS, port=server.port))
    epochs: list[str] = []
    lower, upper, tight = 0, 0, 0
    with trio.fail_after(60):
        for cycle in range(KILLS + 1):
            feed.release = trio.Event()
            async with daemon(config) as (process, port):
                watcher = Watcher(port, feed)
                closed = await nursery.start(watcher.connect)
                view = watcher.client.views["live"]
                restored = watcher.diamonds
                context = (
                    f"seed {seed}, cycle {cycle}: restored {restored}, bounds [{lower}, {upper}]"
                )
                assert lower <= restored <= upper, context
                assert view.epoch not in epochs, f"{context}: an unclean restart kept its epoch"
                epochs.append(str(view.epoch))
                feed.active = True
                feed.release.set()
                if cycle < KILLS:
                    await trio.sleep(rng.uniform(0.7, 1.3))
                    feed.active = False
                    process.kill()
                    killed_at = trio.current_time()
                    await process.wait()
                    upper = feed.truth()
                    before = watcher.published_by(killed_at - FLUSH_MS / 1000 - SLACK_S)
                    tight += before > restored  # the bound says more than "nothing lost"
                    lower = max(restored, before)
                else:  # the re-sent history, a little more, then check the total
                    await trio.sleep(0.3)
                    feed.active = False
                    with trio.fail_after(10):
                        while watcher.diamonds != feed.truth():
                            await trio.sleep(0.01)
                    process.send_signal(signal.SIGTERM)
                    assert await process.wait() == 0
                await closed.wait()
    assert tight > 0, f"seed {seed}: no kill came late enough after new events to test"
    assert len(feed.sent) > RESEND, "the feed sent too little to test anything"


async def test_sigterm_then_restart_resumes_dashboards_without_a_snapshot(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """SIGTERM writes the final state; the restarted daemon keeps epoch and seq, and a
    dashboard resuming with ``since`` gets deltas only, even as history is re-sent."""
    feed = Feed(random.Random(7))
    server = await nursery.start(serve_websocket, feed.handler, "127.0.0.1", 0, None)
    config = tmp_path / "meksd.toml"
    config.write_text(CONFIG.format(store=tmp_path / "store.db", flush=1000, port=server.port))
    with trio.fail_after(30):
        async with daemon(config) as (process, port):
            watcher = Watcher(port, feed)
            closed = await nursery.start(watcher.connect)
            feed.active = True
            feed.release.set()
            await trio.sleep(0.5)
            feed.active = False
            with trio.fail_after(10):
                while watcher.diamonds != feed.truth():
                    await trio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            await closed.wait()
        view = watcher.client.views["live"]
        epoch, seq = view.epoch, view.seq
        feed.release = trio.Event()
        async with daemon(config) as (process, port):
            again = DashClient(f"ws://127.0.0.1:{port}/ws")
            again.views["live"] = view
            async with open_dashboard(again.url) as again.ws:
                await again.subscribe("live", resume=True)
                feed.active = True
                feed.release.set()
                await trio.sleep(0.3)
                feed.active = False
                await again.read_until(lambda: view.state["totals"]["diamonds"] == feed.truth())
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert view.snapshots == 1, "the resumed dashboard was sent a snapshot"
    assert view.epoch == epoch
    assert view.seq > seq
