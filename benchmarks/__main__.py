"""``python -m benchmarks [--quick] [--only meksd,node-batched,...,split,rooms,profile]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import attrs

from benchmarks import report, run


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the short profile (< 2 minutes)")
    ap.add_argument(
        "--only",
        help="comma-separated: meksd, meksd-msgpack, node-batched, node-event, py-websockets, "
        "split, rooms, profile",
    )
    ap.add_argument("--profile-seconds", type=float, help="py-spy run length (0: skip)")
    ap.add_argument(
        "--p3-per-room",
        type=int,
        help="dashboards per room at point 3 (results go to <profile>-p3x<N>.json/-report.md)",
    )
    ap.add_argument(
        "--meksd-src",
        help="import meksd from this directory instead of the working tree "
        "(e.g. a `git archive HEAD meksd` export)",
    )
    ap.add_argument(
        "--merge", action="store_true", help="merge into the previous results of the profile"
    )
    ap.add_argument("--report-only", metavar="JSON", help="rebuild the report from results")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.report_only:
        with open(args.report_only) as f:
            results = json.load(f)
    else:
        prof = run.QUICK if args.quick else run.FULL
        if args.profile_seconds is not None:
            prof = attrs.evolve(prof, profile_s=args.profile_seconds)
        if args.p3_per_room is not None:
            name = f"{prof.name}-p3x{args.p3_per_room}"
            prof = attrs.evolve(prof, name=name, p3_per_room=args.p3_per_room)
        if args.meksd_src:
            run.MEKSD_SRC = Path(args.meksd_src).resolve()
        only = args.only.split(",") if args.only else None
        t0 = time.monotonic()
        results = asyncio.run(run.run(prof, only, log))
        if args.merge:
            # Re-run some servers and keep the rest of the previous run's results.
            with open(run.RESULTS / f"{prof.name}.json") as f:
                old = json.load(f)
            old["servers"].update(results["servers"])
            for key in ("split", "rooms", "rooms_peers", "profile_run"):
                if key in results:
                    old[key] = results[key]
            old.setdefault("reruns", []).append(
                {"only": only, "started": results["started"], "machine": results["machine"]}
            )
            results = old
        log(f"done in {time.monotonic() - t0:.0f}s")
    print(report.write(results, log))


if __name__ == "__main__":
    main()
