#!/usr/bin/env python3
"""How many inference threads the live path should use: ``nerveseg serve --threads N`` end to end, N interleaved.

Same run as benchmarks/speed/bench_vs_fast.py's NerveSeg side (our replay server sends grey 580x420 frames at --fps,
``nerveseg serve`` segments them, this script takes the labelmaps back over IGTL and matches them to the frames by
their IGTL timestamp), once per thread count per round, the order of the counts alternating between rounds.

    .venv/bin/python benchmarks/speed/bench_threads.py --threads 1,2 --rounds 3 --frames 300   # writes threads.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent

import bench_vs_fast as vs  # noqa: E402  (beside this script: its NerveSeg run, run_system, is the one measured here)

from NerveSegLogic.testing.sample_feed import sample_frames  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="auto", help="serve's --backend (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--report", default=str(HERE / "threads.md"))
    args = parser.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]

    from NerveSegLogic.models import registry

    args.model = args.model or registry.default_name()
    runs = []
    with tempfile.TemporaryDirectory(prefix="nerveseg-threads-") as tmp:
        frames = Path(tmp) / "frames"
        frames.mkdir()
        sample_frames(frames)
        for round_index in range(args.rounds):
            for threads in (counts if round_index % 2 == 0 else list(reversed(counts))):
                args.threads = threads
                run = vs.run_system("nerveseg", args, frames, Path(), None, Path(tmp), backend=args.backend)
                run.update(round=round_index + 1, threads=threads)
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in ("latencies_ms", "log_tail")}), flush=True)
    import numpy as np

    lines = [
        "# Inference threads in the live path (`nerveseg serve --threads N`)",
        "",
        f"- machine: {os.cpu_count()} cores, no GPU; the load average before and after each run is below (above "
        "the core count, other jobs competed for the CPU while it was measured)",
        f"- date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')}; model `{args.model}`, serve "
        f"`--backend {args.backend}`; {args.frames} grey 580x420 frames at {args.fps:g} fps per run, {args.rounds} "
        "rounds, thread counts interleaved",
        f"- command: `benchmarks/speed/bench_threads.py --threads {','.join(map(str, counts))} --rounds {args.rounds} "
        f"--frames {args.frames} --backend {args.backend}`",
        "- latency: replay server stamps the frame -> the labelmap is back in this script over IGTL",
        "",
        "| threads | runs | sent | segmented | lost | fps (mean) | p50 ms | p95 ms | p99 ms | CPU % of serve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads in counts:
        mine = [r for r in runs if r["threads"] == threads]
        lat = [v for r in mine for v in r["latencies_ms"]]
        pct = (lambda q: f"{np.percentile(lat, q):.1f}") if lat else (lambda q: "-")
        sent, seg = sum(r["frames_sent"] for r in mine), sum(r["segmented"] for r in mine)
        lines.append(f"| {threads} | {len(mine)} | {sent} | {seg} | {sent - seg} | "
                     f"{statistics.mean(r['fps'] for r in mine):.1f} | {pct(50)} | {pct(95)} | {pct(99)} | "
                     f"{statistics.mean(r['cpu_percent'] for r in mine):.0f} |")
    lines += ["", "| round | threads | load before (1/5/15) | after | segmented/sent | p50 | p99 |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['round']} | {r['threads']} | {' '.join(map(str, r['load_average_before']))} | "
                     f"{' '.join(map(str, r['load_average_after']))} | {r['segmented']}/{r['frames_sent']} | "
                     f"{r['latency_p50_ms']} | {r['latency_p99_ms']} |")
    Path(args.report).write_text("\n".join(lines) + "\n")
    Path(args.report).with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "log_tail"} for r in runs], indent=1) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
