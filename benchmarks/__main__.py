"""``python -m benchmarks [--quick] [--only meksd,node-batched,...,rooms,profile]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from benchmarks import report, run


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the short profile (< 2 minutes)")
    ap.add_argument(
        "--only",
        help="comma-separated: meksd, node-batched, node-event, py-websockets, rooms, profile",
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
        only = args.only.split(",") if args.only else None
        t0 = time.monotonic()
        results = asyncio.run(run.run(prof, only, log))
        log(f"done in {time.monotonic() - t0:.0f}s")
    print(report.write(results, log))


if __name__ == "__main__":
    main()
