"""The floor of the two-stage design: trio with nothing of meksd in it.

    python -m benchmarks.experiments.bare_trio [SECONDS]

Point 3's shape with one dashboard per room: 25 feeds at 50 messages/s each (~300
bytes, newline-delimited, no WebSocket), each room's messages read by a *source* task,
handed to its *actor* task through a bounded memory channel, encoded (one
``orjson.dumps`` of a small dict) and written with one non-blocking ``send`` to the
room's one reader. The server runs in a subprocess (pinned to CPU 0 when there are two),
the feeds and readers in this process (asyncio, CPU 1). Three servers, alternating:

- ``trio-2stage``: source → channel → actor, as meksd's stages talk;
- ``trio-1stage``: the source encodes and writes itself (one task step per event);
- ``asyncio-1stage``: the same single stage on asyncio's loop, for scale.

Reports the server's CPU per event. Bounded: SECONDS (default 20) per run, three
rounds; loopback only.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
import time

ROOMS = 25
RATE = 50.0
PAYLOAD = b"x" * 290


def server_main(kind: str, seconds: float) -> None:
    """Accept 25 feeds then 25 readers on two listening sockets; serve for ``seconds``."""
    feeds = socket.create_server(("127.0.0.1", 0))
    readers = socket.create_server(("127.0.0.1", 0))
    print(feeds.getsockname()[1], readers.getsockname()[1], flush=True)
    ins = [feeds.accept()[0] for _ in range(ROOMS)]
    outs = [readers.accept()[0] for _ in range(ROOMS)]
    for s in (*ins, *outs):
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    import orjson  # noqa: F401 - imported before the clock starts
    import trio

    before = resource.getrusage(resource.RUSAGE_SELF)
    if kind.startswith("trio"):
        trio.run(_trio_server, kind, ins, outs, seconds)
    else:
        asyncio.run(_asyncio_server(ins, outs, seconds))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"{cpu:.6f}", flush=True)


def _encode(line: bytes, n: int) -> bytes:
    import orjson

    return orjson.dumps({"type": "delta", "seq": n, "items": [line.decode()]}) + b"\n"


async def _trio_server(kind: str, ins: list[socket.socket], outs: list[socket.socket], s: float):
    import trio

    async def source(sock: socket.socket, emit) -> None:  # type: ignore[no-untyped-def]
        rest = b""
        while True:
            await trio.lowlevel.wait_readable(sock)
            data = sock.recv(65536)
            if not data:
                return
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                emit(line)

    async def actor(receive, out: socket.socket) -> None:  # type: ignore[no-untyped-def]
        n = 0
        async for line in receive:
            n += 1
            out.send(_encode(line, n))

    async with trio.open_nursery() as nursery:
        for sock, out in zip(ins, outs, strict=True):
            if kind == "trio-2stage":
                send, receive = trio.open_memory_channel[bytes](1000)
                nursery.start_soon(source, sock, send.send_nowait)
                nursery.start_soon(actor, receive, out)
            else:
                counter = [0]

                def emit(line: bytes, out: socket.socket = out, counter: list[int] = counter):
                    counter[0] += 1
                    out.send(_encode(line, counter[0]))

                nursery.start_soon(source, sock, emit)
        await trio.sleep(s)
        nursery.cancel_scope.cancel()


async def _asyncio_server(ins: list[socket.socket], outs: list[socket.socket], s: float) -> None:
    loop = asyncio.get_running_loop()
    for sock, out in zip(ins, outs, strict=True):
        state = {"rest": b"", "n": 0}

        def readable(sock: socket.socket = sock, out: socket.socket = out, st=state) -> None:  # type: ignore[no-untyped-def]
            data = sock.recv(65536)
            if not data:
                loop.remove_reader(sock)
                return
            *lines, st["rest"] = (st["rest"] + data).split(b"\n")
            for line in lines:
                st["n"] += 1
                out.send(_encode(line, st["n"]))

        loop.add_reader(sock, readable)
    await asyncio.sleep(s)


async def run(kind: str, seconds: float) -> float:
    """CPU seconds per event of one server run."""
    two = (os.cpu_count() or 1) >= 2
    pin = (lambda: os.sched_setaffinity(0, {0})) if two else None
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "benchmarks.experiments.bare_trio", "--server", kind, str(seconds)],
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=pin,
    )
    assert proc.stdout is not None
    ports = (await proc.stdout.readline()).split()
    feed_port, reader_port = int(ports[0]), int(ports[1])
    writers = []
    for _ in range(ROOMS):
        _, w = await asyncio.open_connection("127.0.0.1", feed_port)
        writers.append(w)
    readers = []
    for _ in range(ROOMS):
        r, keep = await asyncio.open_connection("127.0.0.1", reader_port)
        readers.append(r)
        writers.append(keep)  # a collected StreamWriter closes its connection

    async def drain(r: asyncio.StreamReader) -> None:
        while await r.read(65536):
            pass

    drains = [asyncio.create_task(drain(r)) for r in readers]
    sent = 0
    start = time.monotonic()
    end = start + seconds - 1.0
    while time.monotonic() < end:
        due = int((time.monotonic() - start) * RATE)
        while sent < due:
            sent += 1
            for w in writers[:ROOMS]:
                w.write(b"%d " % sent + PAYLOAD + b"\n")
        await asyncio.sleep(0.001)
    cpu = float((await proc.stdout.read()).split()[-1])
    await proc.wait()
    for w in writers:
        w.close()
    for task in drains:
        task.cancel()
    return cpu / (sent * ROOMS)


async def main(seconds: float) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    kinds = ("trio-2stage", "trio-1stage", "asyncio-1stage")
    print(f"{ROOMS} rooms x {RATE:g} messages/s, {seconds:g} s per run; server CPU per message")
    for round_ in range(3):
        for kind in kinds:
            per = await run(kind, seconds)
            print(f"round {round_ + 1} {kind:15s} {per * 1e6:6.1f} us")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--server"]:
        server_main(sys.argv[2], float(sys.argv[3]))
    else:
        asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0))
