"""What one wake-up per tick costs, with nothing else to do: trio against its peers.

    python -m benchmarks.experiments.tick_wake [SECONDS]

A busy room wakes the process once per tick (16 ms, 62.5 times a second) and, on this
kind of VM, a wake-up after 16 ms of sleep is far dearer than the same wake-up a
millisecond after the last one: caches and TLBs are cold again. Each runner here does
nothing but sleep until the next tick of a 16 ms grid, in a subprocess (pinned to CPU 0
when there are two):

- ``trio``: ``trio.sleep_until`` (a cancel scope's deadline, as the actor's and the
  sources' timed waits);
- ``asyncio``: ``asyncio.sleep`` to the next tick;
- ``sleep``: ``time.sleep`` to the next tick (the process's own floor);
- ``node``: ``setInterval(..., 16)`` (the Node peers' tick), when ``node`` is installed.

Reports each runner's CPU per wake-up (user + system, ``getrusage``/``cpuUsage``) and,
for the Python ones, how late the wake-up came after its tick (trio's and asyncio's
timers are ``epoll_wait`` timeouts in whole milliseconds, rounded up). Bounded:
SECONDS (default 8) per run, three alternating rounds; no sockets at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

TICK_S = 0.016
RUNNERS = ("trio", "asyncio", "sleep", "node")

_NODE = """
const seconds = parseFloat(process.argv[1]); let n = 0;
const c0 = process.cpuUsage(); const t0 = Date.now();
const h = setInterval(() => {
  n++;
  if (Date.now() - t0 >= seconds * 1000) {
    clearInterval(h); const c = process.cpuUsage(c0);
    console.log(`${(c.user + c.system) / 1e6} ${n}`);
  }
}, 16);
"""


def runner_main(kind: str, seconds: float) -> None:
    """Sleep to each tick of a 16 ms grid for ``seconds``; print CPU, wake-ups, lateness."""
    import asyncio
    import resource
    import time

    import trio

    late: list[float] = []
    cpu = [0.0]

    def used() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    # Each loop counts its own CPU from its first tick on (imports and loop set-up not).
    if kind == "trio":

        async def trio_loop() -> None:
            start, tick = used(), trio.current_time()
            end = tick + seconds
            while tick < end:
                tick += TICK_S
                await trio.sleep_until(tick)
                late.append(trio.current_time() - tick)
            cpu[0] = used() - start

        trio.run(trio_loop)
    elif kind == "asyncio":

        async def asyncio_loop() -> None:
            loop = asyncio.get_running_loop()
            start, tick = used(), loop.time()
            end = tick + seconds
            while tick < end:
                tick += TICK_S
                await asyncio.sleep(max(0.0, tick - loop.time()))
                late.append(loop.time() - tick)
            cpu[0] = used() - start

        asyncio.run(asyncio_loop())
    else:
        start, tick = used(), time.monotonic()
        end = tick + seconds
        while tick < end:
            tick += TICK_S
            time.sleep(max(0.0, tick - time.monotonic()))
            late.append(time.monotonic() - tick)
        cpu[0] = used() - start
    late.sort()
    p50, p99 = late[len(late) // 2], late[int(len(late) * 0.99)]
    print(f"{cpu[0]:.6f} {len(late)} {p50:.6f} {p99:.6f}", flush=True)


def run_one(kind: str, seconds: float) -> tuple[float, int, float | None, float | None]:
    """One runner in its own process: (CPU seconds, wake-ups, late p50, late p99)."""
    if kind == "node":
        node = shutil.which("node")
        assert node is not None
        argv = [node, "-e", _NODE, str(seconds)]
    else:
        argv = [sys.executable, "-m", "benchmarks.experiments.tick_wake", "--runner", kind]
        argv.append(str(seconds))
    pin = (lambda: os.sched_setaffinity(0, {0})) if (os.cpu_count() or 1) >= 2 else None
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pin, check=True
    ).stdout.split()
    if kind == "node":
        return float(out[0]), int(out[1]), None, None
    return float(out[0]), int(out[1]), float(out[2]), float(out[3])


def main(seconds: float) -> None:
    kinds = [k for k in RUNNERS if k != "node" or shutil.which("node")]
    print(f"one wake-up per {TICK_S * 1000:g} ms tick, {seconds:g} s per run, three rounds")
    for round_ in range(1, 4):
        for kind in kinds:
            cpu, wakes, p50, p99 = run_one(kind, seconds)
            late = (
                ""
                if p50 is None or p99 is None
                else (f", late p50 {p50 * 1000:.2f} ms p99 {p99 * 1000:.2f} ms")
            )
            print(
                f"round {round_} {kind:8s} {cpu / wakes * 1e6:6.0f} us CPU per wake-up "
                f"({cpu / seconds * 100:.2f} % of a core){late}",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--runner":
        runner_main(sys.argv[2], float(sys.argv[3]))
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0)
