"""Tables (markdown) and the latency-over-time plot from a run's results."""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

from benchmarks.run import BURST, MSGPACK_KIND, RESULTS


def _f(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}×"


def _gc(r: dict[str, Any]) -> str:
    if "gc_pause_seconds_count" not in r:
        return "–"
    n = r["gc_pause_seconds_count"]
    le = r["gc_pause_seconds_max_le"]
    return f"{n} GCs, max ≤ {float(le) * 1000:g} ms" if le and le != "+Inf" else f"{n} GCs"


def _lag(r: dict[str, Any]) -> str:
    le = r.get("event_loop_lag_seconds_max_le")
    if le is None:
        return "–"
    return f"≤ {float(le) * 1000:g} ms" if le != "+Inf" else "> 2.5 s"


def phase_table(servers: dict[str, Any], key: str) -> list[str]:
    rows = [
        "| server | events/s | deliveries/s | p50 ms | p99 ms | max ms | lost | resynced "
        "| server CPU % | client CPU % | peak RSS MB | GC pauses | loop lag max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for kind, s in servers.items():
        r = s.get(key)
        if not r:
            if s.get("error"):
                rows.append(f"| {kind} | failed: {s['error'][:80]} |" + " |" * 11)
            continue
        rows.append(
            f"| {kind} | {r['events_per_s']:.0f} | {r['deliveries_per_s']:.0f} "
            f"| {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r['max_ms'])} "
            f"| {r['lost'] + r['lost_disconnected']} | {r['resynced']} "
            f"| {r['server_cpu_pct']:.1f} | {r['client_cpu_pct']:.1f} "
            f"| {s.get('peak_rss_mb', 0):.0f} | {_gc(r)} | {_lag(r)} |"
        )
    return rows


def ratio_lines(servers: dict[str, Any], key: str) -> list[str]:
    m = servers.get("meksd", {}).get(key)
    if not m:
        return []
    out = []
    for kind, s in servers.items():
        if kind in ("meksd", MSGPACK_KIND) or not s.get(key):
            continue
        r = s[key]
        out.append(
            f"| meksd / {kind} | {_ratio(m['server_cpu_pct'], r['server_cpu_pct'])} "
            f"| {_ratio(m['p99_ms'], r['p99_ms'])} | {_ratio(m['max_ms'], r['max_ms'])} |"
        )
    if not out:
        return []
    return ["| ratio | server CPU | p99 | max |", "|---|---:|---:|---:|", *out]


def _cpu_parts(r: dict[str, Any]) -> str:
    if "server_user_pct" not in r:
        return "–"
    return f"{r['server_user_pct']:.1f} + {r['server_system_pct']:.1f}"


def split_lines(servers: dict[str, Any], split: dict[str, Any] | None, n: int) -> list[str]:
    """Point 1's CPU split in the per-event pipeline (the one-dashboard run) and the
    fan-out (what the other ``n - 1`` dashboards add), per server, and meksd's ratios."""
    rows = [
        f"| server | point 1 ({n} dashboards) | 1 dashboard: the pipeline "
        f"| the other {n - 1}: the fan-out | user + system, point 1 | user + system, 1 dashboard |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    parts: dict[str, tuple[float, float]] = {}
    for kind, one in (split or {}).items():
        full = servers.get(kind, {}).get("p1")
        if not one or "error" in one or not full:
            continue
        pipeline = one["server_cpu_pct"]
        fan_out = full["server_cpu_pct"] - pipeline
        parts[kind] = (pipeline, fan_out)
        rows.append(
            f"| {kind} | {full['server_cpu_pct']:.1f} | {pipeline:.1f} | {fan_out:.1f} "
            f"| {_cpu_parts(full)} | {_cpu_parts(one)} |"
        )
    if not parts:
        return []
    m = parts.get("meksd")
    if m is not None:
        for kind, (pipeline, fan_out) in parts.items():
            if kind != "meksd":
                rows.append(
                    f"| meksd / {kind} | | {_ratio(m[0], pipeline)} | {_ratio(m[1], fan_out)} | | |"
                )
    return [
        "### Where point 1's CPU goes",
        "",
        *rows,
        "",
        "CPU % of one core. The pipeline: the same feed with one dashboard (reading, "
        "parsing, applying, encoding, one send per publish); the fan-out: point 1's CPU "
        "less that. Separate runs: each part carries one run's noise. System time includes "
        "loopback TCP's receive side, which runs in the sender's time.",
    ]


def ceiling_table(servers: dict[str, Any]) -> list[str]:
    rows = [
        "| server | ceiling ev/s (p99 ≤ 50 ms, nothing lost) | first failing level | why "
        "| server CPU % at ceiling | client CPU % at ceiling |",
        "|---|---:|---|---|---:|---:|",
    ]
    for kind, s in servers.items():
        c = s.get("ceiling")
        if not c:
            continue
        levels = c["levels"]
        fail = next((lv for lv in levels if not lv["pass"]), None)
        ok = [lv for lv in levels if lv["pass"]]
        last = ok[-1] if ok else None
        why = "–"
        if fail is not None:
            reasons = []
            if fail["p99_ms"] is None or fail["p99_ms"] > 50:
                reasons.append(f"p99 {_f(fail['p99_ms'])} ms")
            if fail["lost"] or fail["lost_disconnected"]:
                reasons.append(f"lost {fail['lost'] + fail['lost_disconnected']}")
            if fail["resynced"]:
                reasons.append(f"resynced {fail['resynced']}")
            if fail["events_per_s"] < 0.95 * fail["level"]:
                reasons.append(f"feed held to {fail['events_per_s']:.0f} ev/s")
            why = ", ".join(reasons)
        ceiling = c["ceiling"]
        shown = "none" if ceiling is None else f"{ceiling:g}"
        if fail is None and ceiling is not None:
            shown = f"≥ {ceiling:g} (highest level tried)"
        first_fail = "–" if fail is None else f"{fail['level']:g}"
        rows.append(
            f"| {kind} | {shown} | {first_fail} | {why} "
            f"| {_f(last and last['server_cpu_pct'])} | {_f(last and last['client_cpu_pct'])} |"
        )
    m = servers.get("meksd", {}).get("ceiling", {}).get("ceiling")
    n = servers.get("node-event", {}).get("ceiling", {}).get("ceiling")
    if m and n:
        rows.append("")
        rows.append(f"meksd ceiling / node-event ceiling: **{m / n:.1f}×** (a lower bound "
                    "if meksd passed the highest level tried).")  # fmt: skip
    return rows


def rooms_table(r: dict[str, Any] | None, peers: dict[str, Any] | None = None) -> list[str]:
    """Point 3: meksd's row, the peers' rows (same rooms, client and profile), and
    meksd's ratios to each peer."""
    runs = {"meksd": r, **(peers or {})}
    rows = [
        "| server | events/s (all rooms) | deliveries/s | p50 ms | p99 ms | max ms | lost "
        "| server CPU % | peak RSS MB | GC pauses | loop lag max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for kind, x in runs.items():
        if not x:
            continue
        if "error" in x:
            rows.append(f"| {kind} | failed: {x['error']} |")
            continue
        rows.append(
            f"| {kind} | {x['events_per_s']:.0f} | {x['deliveries_per_s']:.0f} "
            f"| {_f(x['p50_ms'])} | {_f(x['p99_ms'])} | {_f(x['max_ms'])} "
            f"| {x['lost'] + x['lost_disconnected']} | {x['server_cpu_pct']:.1f} "
            f"| {x['peak_rss_mb']:.0f} | {_gc(x)} | {_lag(x)} |"
        )
    if len(rows) == 2:
        return []
    ratios = [
        f"| meksd / {kind} | {_ratio(r['server_cpu_pct'], x['server_cpu_pct'])} "
        f"| {_ratio(r['p99_ms'], x['p99_ms'])} | {_ratio(r['max_ms'], x['max_ms'])} |"
        for kind, x in (peers or {}).items()
        if r and "error" not in r and x and "error" not in x
    ]
    if ratios:
        rows = ["| ratio | server CPU | p99 | max |", "|---|---:|---:|---:|", *ratios, "", *rows]
    return rows


def _per_s(r: dict[str, Any], key: str) -> float:
    return float(r[key]) / max(float(r["seconds"]), 1e-9)


def msgpack_lines(servers: dict[str, Any]) -> list[str]:
    """The measured ``meks.v1.msgpack`` run against JSON meksd, and the estimate."""
    m = servers.get("meksd", {}).get("p1")
    if not m:
        return []
    lines: list[str] = []
    mp = servers.get(MSGPACK_KIND, {}).get("p1")
    if mp:
        j_bps, p_bps = _per_s(m, "client_bytes"), _per_s(mp, "client_bytes")
        j_bpd = m["client_bytes"] / max(m["deliveries"], 1)
        p_bpd = mp["client_bytes"] / max(mp["deliveries"], 1)
        lines += [
            "### `meks.v1.msgpack`, measured",
            "",
            f"meksd again at point 1 ({mp['seconds']:.0f} s) with every dashboard speaking "
            "`meks.v1.msgpack`. Bytes are WebSocket payload bytes received by all "
            "dashboards; CPU is % of one core.",
            "",
            "| wire | events/s | deliveries/s | received MB/s | bytes per delivery "
            "| server CPU % | client CPU % | p50 ms | p99 ms | lost | resynced |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r, bps, bpd in (("JSON", m, j_bps, j_bpd), ("msgpack", mp, p_bps, p_bpd)):
            lines.append(
                f"| {name} | {r['events_per_s']:.0f} | {r['deliveries_per_s']:.0f} "
                f"| {bps / 1e6:.2f} | {bpd:.0f} | {r['server_cpu_pct']:.1f} "
                f"| {r['client_cpu_pct']:.1f} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} "
                f"| {r['lost'] + r['lost_disconnected']} | {r['resynced']} |"
            )
        lines += [
            "",
            f"msgpack saves **{(j_bps - p_bps) / 1e6:.2f} MB/s ({1 - p_bpd / j_bpd:.0%} of the "
            f"bytes per delivery)** at point 1; server CPU msgpack / JSON: "
            f"**{_ratio(mp['server_cpu_pct'], m['server_cpu_pct'])}**.",
            "",
        ]
    if m.get("json_bytes_sampled"):
        j, p = m["json_bytes_sampled"], m["msgpack_bytes_sampled"]
        per_s = _per_s(m, "client_bytes")
        saved = per_s * (1 - p / j)
        lines.append(
            f"Estimate (one JSON dashboard's point-1 messages re-encoded with msgpack): "
            f"{p / j:.1%} of their JSON bytes ({j} → {p} bytes sampled); over all "
            f"dashboards at point 1, {per_s / 1e6:.2f} MB/s of JSON, so about "
            f"{saved / 1e6:.2f} MB/s ({1 - p / j:.0%}) saved."
        )
    return lines


def profile_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    if "profile" not in r:
        return [f"Profile: {r.get('error', 'not run')}"]
    prof = r["profile"]
    idle = prof.get("idle_samples")
    left_out = (
        f"; {idle} samples waiting in `epoll_wait` or in an idle worker thread left out"
        if idle is not None
        else ""
    )
    lines = [
        f"py-spy, {prof['samples']} samples of the busy time (idle excluded{left_out}), "
        f"meksd at point 1's load (server CPU {r['server_cpu_pct']:.0f}% during the "
        "profiled run).",
        "",
        "| self % | function |",
        "|---:|---|",
    ]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in prof["self"][:15]]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {pct:.1f} | `{name}` |" for name, pct in prof["inclusive"][:25]]
    return lines


def plot(results: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    servers = {k: s for k, s in results["servers"].items() if s.get("series")}
    if not servers:
        return None
    fig, axes = plt.subplots(
        len(servers), 1, figsize=(9, 2.1 * len(servers)), sharex=True, sharey=True
    )
    if len(servers) == 1:
        axes = [axes]
    for ax, (kind, s) in zip(axes, servers.items(), strict=True):
        data = array("q")
        try:
            with open(s["series"], "rb") as f:
                data.frombytes(f.read())
        except OSError:
            continue
        a = np.frombuffer(data, dtype=np.int64).reshape(-1, 3)
        a = a[a[:, 2] == BURST]
        if len(a) == 0:
            continue
        t = (a[:, 0] - a[:, 0].min()) / 1e9
        lat = a[:, 1] / 1e6
        bins = np.floor(t / 0.25).astype(int)
        xs, p50, p99, mx = [], [], [], []
        for b in np.unique(bins):
            sel = lat[bins == b]
            xs.append(b * 0.25)
            p50.append(np.percentile(sel, 50))
            p99.append(np.percentile(sel, 99))
            mx.append(sel.max())
        ax.plot(xs, mx, lw=0.8, color="tab:red", label="max")
        ax.plot(xs, p99, lw=1.0, color="tab:orange", label="p99")
        ax.plot(xs, p50, lw=1.0, color="tab:blue", label="p50")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{kind}", fontsize=9, loc="left")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    prof = results["profile"]
    axes[-1].set_xlabel(
        f"seconds into the burst run ({prof['burst_base']:g} ev/s with "
        f"{prof['burst_len_s']:g} s bursts of {prof['burst_peak']:g} ev/s every "
        f"{prof['burst_every_s']:g} s; {prof['dashboards']} dashboards)"
    )
    fig.suptitle("feed send → dashboard receive latency, per 250 ms", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def markdown(results: dict[str, Any], png: Path | None) -> str:
    prof = results["profile"]
    servers = results["servers"]
    lines = [
        f"# meksd benchmark — {prof['name']} profile",
        "",
        f"Run {results['started']}, {results.get('elapsed_s', 0):.0f} s; machine: "
        f"{json.dumps(results['machine'])}.",
        "",
        f"## Point 1: {prof['dashboards']} dashboards, {prof['p1_rate']:g} events/s into "
        f"one room for {prof['p1_s']:g} s",
        "",
        *ratio_lines(servers, "p1"),
        "",
        *phase_table(servers, "p1"),
        "",
        f"lost: deliveries not received within {prof['drain_s']:g} s after the phase "
        "ended (late or lost); resynced: covered by `lagged` + snapshot. Latency is feed "
        "send → dashboard receive; percentiles from the fully parsed dashboards, max from "
        "every dashboard. CPU is % of one core over the phase.",
        "",
        *split_lines(servers, results.get("split"), prof["dashboards"]),
        "",
        *msgpack_lines(servers),
        "",
        f"## Burst run: {prof['burst_base']:g} ev/s with {prof['burst_len_s']:g} s bursts of "
        f"{prof['burst_peak']:g} ev/s every {prof['burst_every_s']:g} s, {prof['burst_s']:g} s",
        "",
        *ratio_lines(servers, "burst"),
        "",
        *phase_table(servers, "burst"),
        "",
    ]
    if png is not None:
        lines += [f"![latency over time, burst run]({png.name})", ""]
    lines += [
        f"## Point 2: ceiling, one room, {prof['dashboards']} dashboards "
        f"(levels {', '.join(f'{x:g}' for x in prof['levels'])} ev/s, {prof['level_s']:g} s each)",
        "",
        *ceiling_table(servers),
        "",
    ]
    if results.get("rooms") or results.get("rooms_peers"):
        lines += [
            f"## Point 3: {prof['p3_rooms']} rooms × {prof['p3_per_room']} dashboards, "
            f"{prof['p3_rate']:g} events/s each, {prof['p3_s']:g} s",
            "",
            *rooms_table(results.get("rooms"), results.get("rooms_peers")),
            "",
        ]
    if results.get("profile_run"):
        lines += ["## Profile of meksd at point 1", "", *profile_lines(results["profile_run"]), ""]
    return "\n".join(lines)


def write(results: dict[str, Any], log: Any) -> str:
    name = results["profile"]["name"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    png = plot(results, RESULTS / f"latency-burst-{name}.png")
    md = markdown(results, png)
    (RESULTS / f"{name}-report.md").write_text(md)
    log(f"wrote {RESULTS / f'{name}.json'}, {RESULTS / f'{name}-report.md'}"
        + (f", {png}" if png else ""))  # fmt: skip
    return md
