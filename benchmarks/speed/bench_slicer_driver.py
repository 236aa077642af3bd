"""The live panel's logic driven as 3D Slicer drives it: does it keep up when the main thread holds the GIL?

In Slicer, PythonQt keeps Python's GIL while the main thread waits in the Qt event loop, so Python threads of
Slicer's process run only while the panel's timer tick runs Python. This benchmark replays 580x420 uint8 frames at
30 fps over OpenIGTLink into a LiveController whose scene carries Slicer's Sequences logic (recording on), and ticks
it with two drivers:

- free-running: tick, then sleep 2 ms (the GIL is free between ticks, as in a headless script);
- GIL-holding: tick, then a C call that keeps the GIL for 5 ms (the panel's timer period), as Slicer's event loop.

for the worker-process mode (the panel's default) and the in-process threads, and reports applied fps, dropped
frames and received-to-applied latency per row, with the load average before each run.

    .venv/bin/python benchmarks/speed/bench_slicer_driver.py                    # writes benchmarks/speed/slicer_driver.md
    .venv/bin/python benchmarks/speed/bench_slicer_driver.py --seconds 5 --modes child-process
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_once(mode: str, driver: str, source: Path, args, threads: int = 0) -> dict:
    from NerveSegLogic.live.controller import LiveController
    from NerveSegLogic.live.selftest import run_sample_replay
    from NerveSegLogic.testing.slicerlike import GilHoldingDriver, slicer_scene

    controller = LiveController(slicer_scene())
    controller.threads = threads  # the panel's inference threads (0: the backend's default)
    applied = []
    controller.result_applied.connect(lambda r: applied.append((time.perf_counter(), r.stage_latencies_ms())))
    frames = int(round(args.fps * args.seconds))
    between = GilHoldingDriver(hold_s=0.005) if driver == "gil-holding" else None
    load = os.getloadavg()[0]
    report = run_sample_replay(controller, frames=frames, fps=args.fps, source=str(source), model=args.model,
                               mode=mode, timeout_s=args.seconds * 4 + 120, between_ticks=between)
    controller.scene.clear()
    times = [t for t, _ in applied]
    total = np.array([lat["total"] for _, lat in applied if "total" in lat])
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"mode": mode, "driver": driver, "threads": threads, "frames_sent": report.frames_sent,
            "received": report.frames_received,
            "applied": report.applied, "dropped": report.dropped, "errors": report.errors, "fps": round(fps, 2),
            "p50_ms": round(float(np.percentile(total, 50)), 1), "p95_ms": round(float(np.percentile(total, 95)), 1),
            "p99_ms": round(float(np.percentile(total, 99)), 1), "load_before": round(load, 2)}


def main() -> None:
    from NerveSegLogic.testing.sample_feed import sample_frames as make_frames

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the registry's default model")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", nargs="+", default=["child-process", "in-process"])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every row")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="inference threads, one row each, interleaved (0: the backend's default)")
    parser.add_argument("--report", default=str(HERE / "slicer_driver.md"))
    args = parser.parse_args()
    from NerveSegLogic.models import registry

    args.model = args.model or registry.default_name()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nerveseg-driver-") as tmp:
        source = Path(tmp)
        make_frames(source)
        for _ in range(args.rounds):
            for mode in args.modes:
                for threads in args.threads:
                    for driver in ("free-running", "gil-holding"):
                        row = run_once(mode, driver, source, args, threads)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    lines = [f"# The live panel under a Slicer-like driver ({args.model}, {args.fps:g} fps, {args.seconds:g} s a run)",
             "",
             f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, no GPU, with "
             f"`python benchmarks/speed/bench_slicer_driver.py {' '.join(sys.argv[1:])}`. Frames: the bundled usgra-seg "
             "sample as 580x420 uint8 grey, replayed over OpenIGTLink on loopback; the scene carries Slicer's "
             "Sequences logic and records every applied frame. Latency: received (in whichever process received "
             "the frame) to applied in the scene. GIL-holding: the main thread keeps the GIL 5 ms between ticks "
             "(ctypes.PyDLL usleep), as Slicer's Qt event loop does; free-running: it sleeps 2 ms instead.",
             "", "| mode | driver | threads | sent | applied | dropped | fps applied | p50 ms | p95 ms | p99 ms | "
             "load before |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['driver']} | {r['threads'] or 'default'} | {r['frames_sent']} | "
                     f"{r['applied']} | {r['dropped']} | "
                     f"{r['fps']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['load_before']:.2f} |")
    by = {}
    for r in rows:
        by.setdefault((r["mode"], r["threads"], r["driver"]), []).append(r)
    lines.append("")
    for mode in args.modes:
        for threads in args.threads:
            free, held = by.get((mode, threads, "free-running")), by.get((mode, threads, "gil-holding"))
            if free and held:
                ratio = np.median([h["p50_ms"] for h in held]) / np.median([f["p50_ms"] for f in free])
                lines.append(f"- {mode}, threads {threads or 'default'}: GIL-holding p50 / free-running p50 = "
                             f"{ratio:.2f}; applied fps {np.median([h['fps'] for h in held]):.1f} vs "
                             f"{np.median([f['fps'] for f in free]):.1f}.")
    Path(args.report).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
