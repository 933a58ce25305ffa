"""The orchestrator: runs every server through the same profiles with the same client.

Layout on a 2-core machine: the server under test on CPU 0; the load client, the
feed (this process) and py-spy on CPU 1.

``meksd-msgpack`` is meksd again, at point 1 only, with every dashboard speaking the
``meks.v1.msgpack`` subprotocol: its bytes received and server CPU against the JSON
``meksd`` run are the measured saving.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import psutil

from benchmarks import feed as feedmod
from benchmarks import servers

RESULTS = servers.ROOT / "benchmarks" / "results"
OUT = servers.ROOT / "benchmarks" / "out"

P1, BURST, CEILING0, P3, PROFILE, SPLIT = 1, 2, 10, 30, 40, 50
MEKSD_SRC: Path | None = None
"""Where the meksd under test is imported from (None: this working tree)."""
MSGPACK_KIND = "meksd-msgpack"
KINDS = (servers.SERVER_KINDS[0], MSGPACK_KIND, *servers.SERVER_KINDS[1:])
"""Every single-room session, in the order they run (``--only`` picks among them)."""


@attrs.frozen
class Profile:
    name: str
    dashboards: int
    verify: int
    p1_rate: float
    p1_s: float
    burst_s: float
    burst_base: float
    burst_peak: float
    burst_every_s: float
    burst_len_s: float
    levels: tuple[float, ...]
    level_s: float
    drain_s: float
    p3_rooms: int
    p3_per_room: int
    p3_rate: float
    p3_s: float
    profile_s: float
    msgpack_p1_s: float
    """Point 1 of the ``meksd-msgpack`` run (a rate: shorter than ``p1_s`` is enough)."""
    split_s: float
    """Point 1's rate with one dashboard, per ``SPLIT_SERVERS`` (0: skip): what the
    per-event pipeline costs without the fan-out (see :func:`split_session`)."""
    ceiling_servers: tuple[str, ...] = ("meksd", "node-event")


FULL = Profile(
    name="full",
    dashboards=300,
    verify=10,
    p1_rate=500,
    p1_s=90,
    burst_s=30,
    burst_base=100,
    burst_peak=2000,
    burst_every_s=10,
    burst_len_s=2,
    levels=(100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000),
    level_s=4,
    drain_s=5,
    p3_rooms=25,
    p3_per_room=30,
    p3_rate=50,
    p3_s=60,
    profile_s=30,
    msgpack_p1_s=60,
    split_s=20,
)
QUICK = Profile(
    name="quick",
    dashboards=100,
    verify=10,
    p1_rate=500,
    p1_s=8,
    burst_s=6,
    burst_base=100,
    burst_peak=2000,
    burst_every_s=6,
    burst_len_s=2,
    levels=(250, 1000, 3000),
    level_s=2,
    drain_s=3,
    p3_rooms=25,
    p3_per_room=10,
    p3_rate=50,
    p3_s=6,
    profile_s=0,
    msgpack_p1_s=8,
    split_s=0,
)


_AVAILABLE_CPUS = sorted(os.sched_getaffinity(0))
"""Read once, at import: the orchestrator later pins itself to the client's CPU."""


def cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU); no pinning on a single-CPU machine."""
    avail = _AVAILABLE_CPUS
    if len(avail) >= 2:
        return avail[0], avail[1]
    return None, None


class Meter:
    """CPU and memory of one process over a window."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._t0 = 0.0
        self._user0 = self._system0 = 0.0
        self.user_pct = self.system_pct = 0.0
        """The last window's split of :meth:`stop`'s answer: user space, and the kernel
        (the sends and loopback TCP, whose receive side runs in the sender's time)."""

    def start(self) -> None:
        t = self.proc.cpu_times()
        self._t0 = time.monotonic()
        self._user0, self._system0 = t.user, t.system

    def stop(self) -> float:
        """CPU % of one core since :meth:`start` (user + system)."""
        t = self.proc.cpu_times()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self.user_pct = 100 * (t.user - self._user0) / elapsed
        self.system_pct = 100 * (t.system - self._system0) / elapsed
        return self.user_pct + self.system_pct

    def peak_rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return self.proc.memory_info().rss / 2**20


class Client:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.meter = Meter(proc.pid)

    @classmethod
    async def start(
        cls,
        server: servers.Server,
        rooms: list[str],
        per_room: int,
        verify: int,
        *,
        cpu: int | None,
        series: Path | None,
        estimate_msgpack: bool,
        wire: str = "json",
    ) -> Client:
        argv = [
            sys.executable, "-m", "benchmarks.client",
            "--port", str(server.ws_port), "--path", server.path,
            "--kind", server.client_kind, "--rooms", ",".join(rooms),
            "--per-room", str(per_room), "--verify", str(verify),
        ]  # fmt: skip
        if series is not None:
            argv += ["--series", str(series)]
        if estimate_msgpack:
            argv.append("--estimate-msgpack")
        if wire != "json":
            argv += ["--wire", wire]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=servers.ROOT,
            preexec_fn=servers.pin(cpu),
            limit=2**24,
        )
        client = cls(proc)
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        if not line.startswith(b"READY"):
            raise RuntimeError(f"load client failed to start: {line!r}")
        return client

    async def ask(self, cmd: str, spans: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "spans": spans}).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        return json.loads(line)  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def scrape(server: servers.Server) -> dict[str, dict[str, float]]:
    """meksd's /metrics histograms we care about, as {name: {le: count}}."""
    if server.admin_port is None:
        return {}
    url = f"http://127.0.0.1:{server.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for name in ("meksd_gc_pause_seconds_bucket", "meksd_event_loop_lag_seconds_bucket"):
            if line.startswith(name + "{"):
                labels, value = line.rsplit(" ", 1)
                le = labels.split('le="', 1)[1].split('"', 1)[0]
                key = name.removesuffix("_bucket")
                # Sum over generations: the max bucket is what we report.
                out.setdefault(key, {})
                out[key][le] = out[key].get(le, 0.0) + float(value)
    return out


def histogram_max(before: dict[str, float], after: dict[str, float]) -> tuple[int, str | None]:
    """(observations in the window, upper bound of the highest non-empty bucket)."""
    bounds = sorted(after, key=lambda le: float("inf") if le == "+Inf" else float(le))
    diffs = [(le, after[le] - before.get(le, 0.0)) for le in bounds]
    total = int(diffs[-1][1]) if diffs else 0
    if total == 0:
        return 0, None
    for le, cum in diffs:
        if cum >= total:
            return total, le
    return total, "+Inf"


def summarize_phase(played: dict[str, Any], client: dict[str, Any], phase: int) -> dict[str, Any]:
    c = client["phases"][str(phase)]
    return {
        "events_sent": played["sent"],
        "target_events": played["target"],
        "seconds": played["seconds"],
        "events_per_s": played["rate"],
        "deliveries": c["expected"] - c["lost"] - c["resynced"] - c["lost_disconnected"],
        **c,
    }


async def play_phase(
    feed: feedmod.FeedServer,
    segments: list[feedmod.Segment],
    server: servers.Server,
    client: Client,
    drain_s: float,
) -> dict[str, Any]:
    """Play ``segments`` (one phase), measure server and client CPU over the play."""
    phase = segments[0].phase
    smeter = Meter(server.pid)
    before = await asyncio.to_thread(scrape, server)
    smeter.start()
    client.meter.start()
    played = (await feed.play(segments))[phase]
    server_cpu = smeter.stop()
    client_cpu = client.meter.stop()
    # Wait for the stragglers: until every dashboard has every event, or drain_s.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    while True:
        await asyncio.sleep(0.25)
        report = await client.ask("stats", {str(phase): played["spans"]})
        c = report["phases"][str(phase)]
        if c["lost"] + c["lost_disconnected"] == 0 or loop.time() >= deadline:
            break
    after = await asyncio.to_thread(scrape, server)
    out = summarize_phase(played, report, phase)
    out["feed_disconnects"] = feed.disconnects
    out["feed_stalls"] = feed.stalls
    out["server_cpu_pct"] = server_cpu
    out["server_user_pct"] = smeter.user_pct
    out["server_system_pct"] = smeter.system_pct
    out["client_cpu_pct"] = client_cpu
    out["deliveries_per_s"] = out["deliveries"] / max(played["seconds"], 1e-9)
    out["open_conns"] = report["open"]
    out["lagged_total"] = report["lagged"]
    for key in ("meksd_gc_pause_seconds", "meksd_event_loop_lag_seconds"):
        if key in after:
            n, le = histogram_max(before.get(key, {}), after[key])
            out[key.removeprefix("meksd_") + "_count"] = n
            out[key.removeprefix("meksd_") + "_max_le"] = le
    out["client_bytes"] = report["bytes"]
    out["client_frames"] = report["frames"]
    out["json_bytes_sampled"] = report["json_bytes_sampled"]
    out["msgpack_bytes_sampled"] = report["msgpack_bytes_sampled"]
    return out


def passes(r: dict[str, Any], level: float) -> bool:
    p99 = r["p99_ms"]
    return (
        p99 is not None
        and p99 <= 50
        and r["lost"] == 0
        and r["resynced"] == 0
        and r["lost_disconnected"] == 0
        and r["events_per_s"] >= 0.95 * level
    )


async def _stop(client: Client | None, server: servers.Server, feed: feedmod.FeedServer) -> None:
    """A session's end: the load client, the server under test, then the feed."""
    if client is not None:
        await client.stop()
    await server.stop()
    await feed.close()


async def single_room_session(kind: str, prof: Profile, out: Path, log: Any) -> dict[str, Any]:
    """One server process, one client: point 1, the burst run, then the ceiling.

    ``meksd-msgpack``: meksd with ``meks.v1.msgpack`` dashboards, point 1 only.
    """
    server_cpu, client_cpu = cpus()
    msgpack = kind == MSGPACK_KIND
    feed = feedmod.FeedServer()
    await feed.start()
    server = await servers.start(
        "meksd" if msgpack else kind,
        feed_urls=[feed.url(0)],
        rooms=["bench0"],
        out=out / kind,
        cpu=server_cpu,
        meksd_src=MEKSD_SRC,
    )
    result: dict[str, Any] = {"server": kind}
    client = None
    try:
        await feed.wait_for(1, 30)
        series = None if msgpack else out / kind / "series.bin"
        client = await Client.start(
            server, ["bench0"], prof.dashboards, prof.verify, cpu=client_cpu,
            series=series, estimate_msgpack=(kind == "meksd"),
            wire="msgpack" if msgpack else "json",
        )  # fmt: skip
        await asyncio.sleep(0.5)
        p1_s = prof.msgpack_p1_s if msgpack else prof.p1_s
        log(f"  {kind}: point 1, {prof.p1_rate:g} ev/s for {p1_s:g}s")
        result["p1"] = await play_phase(
            feed, feedmod.steady(P1, prof.p1_rate, p1_s), server, client, prof.drain_s
        )
        if msgpack:
            final = await client.ask("final", {})
            result["client_final"] = {k: v for k, v in final.items() if k != "phases"}
            result["peak_rss_mb"] = Meter(server.pid).peak_rss_mb()
            return result
        log(f"  {kind}: burst run")
        result["burst"] = await play_phase(
            feed,
            feedmod.burst(
                BURST, prof.burst_base, prof.burst_peak, prof.burst_s,
                prof.burst_every_s, prof.burst_len_s,
            ),
            server, client, prof.drain_s,
        )  # fmt: skip
        if kind in prof.ceiling_servers:
            levels = []
            ceiling = None
            for i, rate in enumerate(prof.levels):
                r = await play_phase(
                    feed, feedmod.steady(CEILING0 + i, rate, prof.level_s), server, client,
                    prof.drain_s,
                )  # fmt: skip
                r["level"] = rate
                r["pass"] = passes(r, rate)
                levels.append(r)
                log(
                    f"  {kind}: ceiling level {rate:g} ev/s: achieved {r['events_per_s']:.0f}, "
                    f"p99 {r['p99_ms']} ms, lost {r['lost']}, resynced {r['resynced']}, "
                    f"server CPU {r['server_cpu_pct']:.0f}%, client CPU "
                    f"{r['client_cpu_pct']:.0f}% -> {'pass' if r['pass'] else 'FAIL'}"
                )
                if not r["pass"]:
                    break
                ceiling = rate
            result["ceiling"] = {"levels": levels, "ceiling": ceiling,
                                 "max_level": prof.levels[-1]}  # fmt: skip
        final = await client.ask("final", {})
        result["client_final"] = {k: v for k, v in final.items() if k != "phases"}
        result["peak_rss_mb"] = Meter(server.pid).peak_rss_mb()
        result["series"] = str(series)
    finally:
        await _stop(client, server, feed)
    return result


SPLIT_SERVERS = ("meksd", "node-batched")
"""The servers point 1 is split for (meksd and the peer its target names)."""


async def split_session(kind: str, prof: Profile, out: Path, log: Any) -> dict[str, Any]:
    """Point 1's feed with one dashboard: the per-event pipeline's cost.

    With the point-1 run of the same server it splits point 1's CPU in two: what one
    dashboard costs (reading, parsing, applying, encoding; the publishes' fixed part)
    and what the other ``dashboards - 1`` add (the fan-out). The two are measured in
    separate runs, so each part carries the run-to-run noise of one run.
    """
    server_cpu, client_cpu = cpus()
    feed = feedmod.FeedServer()
    await feed.start()
    server = await servers.start(
        kind, feed_urls=[feed.url(0)], rooms=["bench0"], out=out / f"{kind}-split",
        cpu=server_cpu, meksd_src=MEKSD_SRC,
    )  # fmt: skip
    client = None
    try:
        await feed.wait_for(1, 30)
        client = await Client.start(
            server, ["bench0"], 1, 1, cpu=client_cpu, series=None, estimate_msgpack=False
        )
        await asyncio.sleep(0.5)
        log(f"  {kind}: point 1 with one dashboard, {prof.p1_rate:g} ev/s for {prof.split_s:g}s")
        r = await play_phase(
            feed, feedmod.steady(SPLIT, prof.p1_rate, prof.split_s), server, client, prof.drain_s
        )
        await client.ask("final", {})
        return r
    finally:
        await _stop(client, server, feed)


ROOMS_SERVERS = ("meksd", "node-batched")
"""Point 3's servers: meksd, and the peer point 1 compares against (it serves each
room's dashboards on its own path, see peers/broadcast.js)."""


async def multi_room_session(
    prof: Profile, out: Path, log: Any, kind: str = "meksd"
) -> dict[str, Any]:
    """Point 3: ``kind`` serving many rooms, a few dashboards each."""
    server_cpu, client_cpu = cpus()
    feed = feedmod.FeedServer()
    await feed.start()
    rooms = [f"room{i:02d}" for i in range(prof.p3_rooms)]
    server = await servers.start(
        kind, feed_urls=[feed.url(i) for i in range(len(rooms))], rooms=rooms,
        out=out / f"{kind}-rooms", cpu=server_cpu, meksd_src=MEKSD_SRC,
    )  # fmt: skip
    client = None
    try:
        await feed.wait_for(len(rooms), 30)
        client = await Client.start(
            server, rooms, prof.p3_per_room, len(rooms), cpu=client_cpu, series=None,
            estimate_msgpack=False,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        log(
            f"  {kind}: point 3, {len(rooms)} rooms x {prof.p3_per_room} dashboards, "
            f"{prof.p3_rate:g} ev/s each, {prof.p3_s:g}s"
        )
        r = await play_phase(
            feed, feedmod.steady(P3, prof.p3_rate, prof.p3_s), server, client, prof.drain_s
        )
        r["peak_rss_mb"] = Meter(server.pid).peak_rss_mb()
        r["rss_mb"] = psutil.Process(server.pid).memory_info().rss / 2**20
        await client.ask("final", {})
        return r
    finally:
        await _stop(client, server, feed)


async def profile_session(prof: Profile, out: Path, log: Any) -> dict[str, Any]:
    """meksd at point 1's load under py-spy (a separate run: sampling costs CPU)."""
    server_cpu, client_cpu = cpus()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    feed = feedmod.FeedServer()
    await feed.start()
    server = await servers.start(
        "meksd", feed_urls=[feed.url(0)], rooms=["bench0"], out=out / "meksd-profile",
        cpu=server_cpu, meksd_src=MEKSD_SRC,
    )  # fmt: skip
    client = None
    raw = out / "meksd-profile" / "pyspy.txt"
    try:
        await feed.wait_for(1, 30)
        client = await Client.start(
            server, ["bench0"], prof.dashboards, prof.verify, cpu=client_cpu, series=None,
            estimate_msgpack=False,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        spy = await asyncio.create_subprocess_exec(
            pyspy, "record", "--nonblocking", "--pid", str(server.pid), "--rate", "250",
            "--format", "raw", "--output", str(raw), "--duration", str(int(prof.profile_s)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=servers.pin(client_cpu),
        )  # fmt: skip
        log(f"  meksd under py-spy: {prof.p1_rate:g} ev/s for {prof.profile_s:g}s")
        r = await play_phase(
            feed, feedmod.steady(PROFILE, prof.p1_rate, prof.profile_s), server, client,
            prof.drain_s,
        )  # fmt: skip
        _, err = await asyncio.wait_for(spy.communicate(), 30)
        if spy.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}", **r}
        r["profile"] = summarize_pyspy(raw)
        r["raw"] = str(raw)
        return r
    finally:
        await _stop(client, server, feed)


IDLE_LEAVES = ("EpollIOManager.get_events ", "WorkerThread._work ")
"""Leaf frames that are waiting, not working: trio's loop in ``epoll_wait`` and an idle
worker thread of trio's thread cache. ``py-spy --nonblocking`` cannot tell a thread
blocked in a system call from a busy one, so these are left out of the busy base."""


def summarize_pyspy(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks, over the
    busy samples (those whose leaf is in :data:`IDLE_LEAVES` are counted apart)."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_s)
        frames = [_short(f) for f in stack.split(";")]
        leaf = frames[-1]
        if leaf.startswith(IDLE_LEAVES):
            idle += n
            continue
        total += n
        self_n[leaf] = self_n.get(leaf, 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n

    def ranked(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "idle_samples": idle,
        "self": ranked(self_n),
        "inclusive": ranked(incl_n),
    }


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``, with a package hint."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "meksd" in parts:
        parts = parts[parts.index("meksd") :]
    else:
        parts = parts[-1:]
    return f"{name} ({'/'.join(parts)})"


def node_ok(log: Any) -> bool:
    why = servers.node_available()
    if why:
        log(f"skipping the Node peers: {why}")
        return False
    return True


async def run(prof: Profile, only: list[str] | None, log: Any) -> dict[str, Any]:
    server_cpu, client_cpu = cpus()
    if server_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # the feed lives with the client
        log(f"server on CPU {server_cpu}; client, feed and py-spy on CPU {client_cpu}")
    else:
        log("one CPU: no pinning (server and client compete)")
    out = OUT / prof.name
    out.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in KINDS if only is None or k in only]
    if any(k.startswith("node") for k in kinds) and not node_ok(log):
        kinds = [k for k in kinds if not k.startswith("node")]
    results: dict[str, Any] = {
        "profile": attrs.asdict(prof),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "servers": {},
    }
    t0 = time.monotonic()
    partial = RESULTS / f"{prof.name}.partial.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    async def guarded(what: str, session: Any) -> dict[str, Any]:
        # One session's failure (a peer that crashed under load) is reported, not fatal.
        try:
            r: dict[str, Any] = await session
        except Exception as exc:
            log(f"  {what} failed: {exc!r}")
            r = {"error": repr(exc)}
        partial.write_text(json.dumps(results, indent=1, default=str))
        return r

    for kind in kinds:
        log(f"[{time.monotonic() - t0:5.0f}s] {kind}")
        results["servers"][kind] = await guarded(kind, single_room_session(kind, prof, out, log))
    if prof.split_s > 0 and (only is None or "split" in only):
        results["split"] = {}
        for kind in SPLIT_SERVERS:
            if kind.startswith("node") and not node_ok(log):
                continue
            log(f"[{time.monotonic() - t0:5.0f}s] point 1 split: {kind}")
            results["split"][kind] = await guarded(
                f"point 1 split ({kind})", split_session(kind, prof, out, log)
            )
    if only is None or "rooms" in only:
        # meksd's under "rooms" (as before), the peers' under "rooms_peers".
        results["rooms_peers"] = {}
        for kind in ROOMS_SERVERS:
            log(f"[{time.monotonic() - t0:5.0f}s] point 3: {kind}")
            r = await guarded(f"point 3 ({kind})", multi_room_session(prof, out, log, kind))
            if kind == "meksd":
                results["rooms"] = r
            else:
                results["rooms_peers"][kind] = r
    if prof.profile_s > 0 and (only is None or "profile" in only):
        log(f"[{time.monotonic() - t0:5.0f}s] profile")
        results["profile_run"] = await guarded("profile", profile_session(prof, out, log))
    results["elapsed_s"] = time.monotonic() - t0
    return results


def machine() -> dict[str, Any]:
    def version(argv: list[str]) -> str | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return None

    return {
        "cpus": os.cpu_count(),
        "cpus_used": _AVAILABLE_CPUS,
        "python": sys.version.split()[0],
        "node": version(["node", "--version"]),
        "meksd_src": str(MEKSD_SRC or servers.ROOT),
        "git_head": version(["git", "-C", str(servers.ROOT), "rev-parse", "--short", "HEAD"]),
        "meksd_tree_dirty": bool(
            version(["git", "-C", str(servers.ROOT), "status", "--porcelain", "meksd"])
        )
        if MEKSD_SRC is None
        else None,
        "load_avg_at_start": os.getloadavg(),
    }
