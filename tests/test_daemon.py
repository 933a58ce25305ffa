"""meksd as a service: sd_notify over a real datagram socket, SIGHUP reload, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from meksd.config import parse_config
from meksd.runtime import actor as actor_mod
from meksd.runtime.app import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(ws: int, http: int, rooms: list[str], *, tick: str = "16") -> str:
    text = f'[server]\nws_listen = "127.0.0.1:{ws}"\nhttp_listen = "127.0.0.1:{http}"\ntick_ms = {tick}\n'
    for room in rooms:
        text += f'[[rooms]]\nid = "{room}"\n[[rooms.sources]]\nkind = "simulator"\nrate = 20.0\n'
    return text


class NotifySocket:
    """The systemd side of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def next(self) -> dict[str, str]:
        data = await self.sock.recv(4096)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    async def wait_for(self, key: str, value: str | None = None) -> dict[str, str]:
        while True:
            msg = await self.next()
            if key in msg and (value is None or msg[key] == value):
                return msg


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    await sock.bind()
    yield sock
    sock.sock.close()


async def test_daemon_ready_reload_and_stop(tmp_path: Path, notify: NotifySocket) -> None:
    """READY=1 only once both listeners accept; SIGHUP applies a good config and rejects a bad one; SIGTERM sends STOPPING=1 and exits 0."""
    ws_port, http_port = free_port(), free_port()
    config = tmp_path / "meksd.toml"
    config.write_text(config_text(ws_port, http_port, ["a"]))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("JOURNAL_STREAM", None)
    lines: list[dict[str, Any]] = []
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "meksd", "run", "--config", str(config)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            async with trio.open_nursery() as nursery:

                async def read_stderr() -> None:
                    assert proc.stderr is not None
                    buf = b""
                    async for chunk in proc.stderr:
                        buf += chunk
                        *done, buf = buf.split(b"\n")
                        for line in done:
                            if line.strip():
                                lines.append(orjson.loads(line.lstrip(b"<0123456789>")))

                nursery.start_soon(read_stderr)
                ready = await notify.wait_for("READY", "1")
                assert "STATUS" in ready and "1 rooms" in ready["STATUS"]
                # Both listeners are up at the moment READY arrives.
                for port in (ws_port, http_port):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.aclose()

                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:

                    async def rooms() -> list[str]:
                        r = await http.get("/api/rooms")
                        return sorted(room["id"] for room in r.json())

                    assert await rooms() == ["a"]
                    config.write_text(config_text(ws_port, http_port, ["a", "b"]))
                    proc.send_signal(signal.SIGHUP)
                    await notify.wait_for("READY", "1")
                    assert await rooms() == ["a", "b"]

                    config.write_text(config_text(ws_port, http_port, ["a"], tick='"fast"'))
                    proc.send_signal(signal.SIGHUP)
                    await notify.wait_for("READY", "1")
                    assert await rooms() == ["a", "b"], "a bad config changes nothing"
                    failed = [x for x in lines if x.get("event") == "reload_failed"]
                    assert failed and "$.server.tick_ms" in failed[0]["msg"]

                proc.send_signal(signal.SIGTERM)
                await notify.wait_for("STOPPING", "1")
                assert await proc.wait() == 0
                nursery.cancel_scope.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert any(x.get("event") == "stopped" for x in lines)


async def test_watchdog_pings_stop_when_an_actor_is_wedged(
    tmp_path: Path, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG=1 is sent while every actor answers a round trip, and stops when one is wedged."""
    wedge = trio.Event()
    original = actor_mod.RoomActor.run

    async def wedgeable(self: actor_mod.RoomActor, **kwargs: Any) -> None:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await wedge.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await original(self, **kwargs)
        await trio.sleep_forever()  # stuck: never takes its inbox again

    monkeypatch.setattr(actor_mod.RoomActor, "run", wedgeable)
    config = parse_config(config_text(0, 0, ["a", "b"]))
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}

    async def count(key: str, seconds: float) -> int:
        seen = 0
        with trio.move_on_after(seconds):
            while True:
                if key in await notify.next():
                    seen += 1
        return seen

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, config, environ=env))
            await notify.wait_for("READY", "1")
            assert await count("WATCHDOG", 1.5) >= 3
            wedge.set()
            await count("WATCHDOG", 0.7)  # one already under way may still land
            assert await count("WATCHDOG", 1.5) == 0
            os.kill(os.getpid(), signal.SIGTERM)
            await notify.wait_for("STOPPING", "1")
