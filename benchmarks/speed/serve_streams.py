#!/usr/bin/env python3
"""Several scanners: one ``nerveseg serve`` for all of them, or one serve process per scanner?

For 1, 2 and 4 simulated scanners, each a replay server sending usgra-seg frames (512 x 512 grey, a different
stretch of the data set per scanner) at 30 fps, this runs, one after the other:

- ``separate``: one ``nerveseg serve --input 127.0.0.1:P`` process per scanner (the plain serve);
- ``multi``: one ``nerveseg serve --input 127.0.0.1:P1=S1 --input 127.0.0.1:P2=S2 ...`` process (one model);
- ``multi+batch``: the same with ``--stream-batch`` (frames waiting for the model at the same moment run as one
  batch); 2 and 4 scanners only.

Each serve is the real command in its own process, with its defaults (the registry's default model on the default
backend, ONNX Runtime INT8 on a CPU, the default thread count). The scanners (replay servers) and one client per
stream (an ImageReceiver on the stream's port, like Slicer's OpenIGTLinkIF) run in this process. After a warm-up
(every client has 10 labelmaps, then 2 s), for --seconds:

- per stream: labelmaps received per second, and frames the scanner sent per second;
- latency: the scanner's IGTL timestamp (its send time) -> the client has the labelmap (one machine, one clock),
  p50 and p99 over every labelmap of the window;
- serve process(es): RSS (sum over the processes, mean and peak of 0.5 s samples) and CPU (% of one core, summed);
- this process (scanners and clients) CPU, and the load average before and after, since other jobs may share the
  cores.

    .venv/bin/python benchmarks/speed/serve_streams.py --seconds 25          # writes serve_streams.json and .md here
    .venv/bin/python benchmarks/speed/serve_streams.py --render --notes notes.md   # the .md again, with notes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import numpy as np  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "usgra-seg" / "images"
FPS = 30.0
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MemorySource:
    """Frames held in memory (decoded once), so the scanners' cost is sending, not PNG decoding."""

    def __init__(self, images, spacing=(0.1, 0.1, 1.0)):
        from NerveSegLogic.frame import ImageGeometry

        self.images = images
        self.geometry = ImageGeometry(spacing=spacing)
        self.fps = FPS
        self.description = f"{len(images)} usgra-seg frames in memory"

    def __len__(self):
        return len(self.images)

    def __iter__(self):
        from NerveSegLogic.stream.sources import SourceFrame

        for index, image in enumerate(self.images):
            yield SourceFrame(image, self.geometry, str(index))


def load_frames(count: int) -> List[np.ndarray]:
    import cv2

    paths = sorted(DATA.glob("*.png"))[:count]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_seconds(pid) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


class Client:
    def __init__(self, port: int):
        from NerveSegLogic.stream.receiver import ImageReceiver

        self.arrivals = []  # (received wall time, IGTL timestamp of the frame)
        self.device_names = set()
        self.receiver = ImageReceiver("127.0.0.1", port, device_name=None, idle_timeout_s=None,
                                      on_frame=self._add)

    def _add(self, frame):
        self.arrivals.append((frame.received_wall, frame.igtl_timestamp))
        self.device_names.add(frame.device_name)


def run_config(scanners: int, mode: str, frames: List[np.ndarray], seconds: float, log_dir: Path) -> Dict:
    from NerveSegLogic.stream.replay import ReplayServer

    step = len(frames) // max(scanners, 1)
    replays = [ReplayServer(MemorySource(frames[i * step:] + frames[:i * step]), fps=FPS, loop=True)
               for i in range(scanners)]
    for replay in replays:
        replay.start()
    outputs = [free_port() for _ in range(scanners)]
    command = [sys.executable, "-m", "NerveSegLogic.cli", "serve"]
    if mode == "separate":
        commands = [command + ["--input", f"127.0.0.1:{r.port}", "--port", str(p)] for r, p in zip(replays, outputs)]
    else:
        inputs = []
        for i, (r, p) in enumerate(zip(replays, outputs)):
            inputs += ["--input", f"127.0.0.1:{r.port}=S{i + 1}@{p}"]
        commands = [command + inputs + (["--stream-batch"] if mode == "multi+batch" else [])]
    logs = []
    processes = []
    for n, argv in enumerate(commands):
        log = open(log_dir / f"{scanners}-{mode}-{n}.log", "w")
        logs.append(log)
        processes.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                          # Ctrl-C's signal stops a serve cleanly; a shell's background job starts
                                          # with it ignored, which its children would inherit
                                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)))
    clients = [Client(p) for p in outputs]
    for client in clients:
        client.receiver.start()
    result: Dict = {"scanners": scanners, "mode": mode, "processes": len(processes)}
    try:
        deadline = time.monotonic() + 180
        while any(len(c.arrivals) < 10 for c in clients):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"{scanners} {mode}: serve did not start; see {log_dir}")
            time.sleep(0.1)
        time.sleep(2.0)
        load_before = os.getloadavg()
        sent_before = [r.frames_sent for r in replays]
        cpu_before = [cpu_seconds(p.pid) for p in processes]
        self_before = cpu_seconds("self")
        t0 = time.time()
        rss = []
        while time.time() - t0 < seconds:
            rss.append(sum(rss_mib(p.pid) for p in processes))
            time.sleep(0.5)
        t1 = time.time()
        cpu_after = [cpu_seconds(p.pid) for p in processes]
        self_after = cpu_seconds("self")
        sent_after = [r.frames_sent for r in replays]
        load_after = os.getloadavg()
    finally:
        for p in processes:
            p.send_signal(signal.SIGINT)
        exits = []
        for p in processes:
            try:
                exits.append(p.wait(60))
            except subprocess.TimeoutExpired:
                p.kill()
                exits.append("killed after 60 s")
        result["exit_codes"] = exits
        for client in clients:
            client.receiver.stop()
        for replay in replays:
            replay.stop()
        for log in logs:
            log.close()
    span = t1 - t0
    streams = []
    all_latencies = []
    for i, client in enumerate(clients):
        window = [(arrived, stamp) for arrived, stamp in list(client.arrivals) if t0 <= arrived < t1]
        latencies = np.array([(arrived - stamp) * 1000.0 for arrived, stamp in window])
        all_latencies.extend(latencies.tolist())
        streams.append({"stream": i + 1, "device": sorted(client.device_names), "fps": len(window) / span,
                        "sent_fps": (sent_after[i] - sent_before[i]) / span,
                        "latency_p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
                        "latency_p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None})
    lat = np.array(all_latencies)
    result.update({
        "seconds": span, "streams": streams,
        "fps_per_stream_mean": float(np.mean([s["fps"] for s in streams])),
        "fps_per_stream_min": float(min(s["fps"] for s in streams)),
        "sent_fps_per_stream": float(np.mean([s["sent_fps"] for s in streams])),
        "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "rss_mib_mean": float(np.mean(rss)), "rss_mib_peak": float(np.max(rss)),
        "serve_cpu_percent": 100.0 * sum(a - b for a, b in zip(cpu_after, cpu_before)) / span,
        "driver_cpu_percent": 100.0 * (self_after - self_before) / span,
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
    })
    return result


def model_batches(frames: List[np.ndarray], repeats: int = 60) -> Dict:
    """The default model alone, as serve loads it: ms per call and per frame for batches of 1, 2 and 4 frames
    (median of ``repeats`` calls), i.e. the most cross-stream batching could save when frames do coincide."""
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.inference.backends import DEFAULT_THREADS
    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.models import registry

    segmenter = load_segmenter(registry.default_name(), backend="auto", device="cpu", threads=DEFAULT_THREADS)
    batches = {size: np.concatenate([pp.preprocess(f, segmenter.spec)[0][np.newaxis] for f in frames[:size]])
               for size in (1, 2, 4)}
    times = {size: [] for size in batches}
    for size, batch in batches.items():
        segmenter.backend.run(batch)
    for _ in range(repeats):  # interleaved, so that the other jobs' load falls on every size alike
        for size, batch in batches.items():
            start = time.perf_counter()
            segmenter.backend.run(batch)
            times[size].append((time.perf_counter() - start) * 1000.0)
    return {size: {"ms_per_call": float(np.median(t)), "ms_per_frame": float(np.median(t)) / size}
            for size, t in times.items()}


def markdown(report: Dict) -> str:
    lines = [
        "# One serve for several scanners: one process vs one process per scanner",
        "",
        f"Measured {report['date']} on {report['machine']} ({report['cores']} cores), model {report['model']} "
        f"({report['backend']}, default thread count), by `benchmarks/speed/serve_streams.py --seconds "
        f"{report['seconds']:g}`. Each scanner is a replay server sending 512 x 512 grey usgra-seg frames at "
        f"{FPS:g} fps; one client per stream reads its labelmaps. Scanners and clients run in the benchmark's own "
        "process on the same two cores (its CPU is in the table), so every configuration also carries their cost.",
        "",
        "fps: labelmaps received per second per stream (mean over the streams, lowest in brackets); sent: frames each "
        "scanner sent per second. Latency: scanner's send time (IGTL timestamp) -> client has the labelmap, over "
        "every labelmap of every stream. RSS: resident memory of the serve process(es), summed, mean (peak). CPU: "
        "the serve process(es), % of one core; bench: the scanners and clients. load: load average (1 min) before "
        "-> after the measurement.",
        "",
        "| round | scanners | serve | processes | fps per stream (lowest) | sent fps | latency p50 ms | "
        "latency p99 ms | RSS MiB (peak) | serve CPU % | bench CPU % | load |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r.get('round', 1)} | {r['scanners']} | {r['mode']} | {r['processes']} | "
                     f"{r['fps_per_stream_mean']:.1f} "
                     f"({r['fps_per_stream_min']:.1f}) | {r['sent_fps_per_stream']:.1f} | {r['latency_p50_ms']:.1f} "
                     f"| {r['latency_p99_ms']:.1f} | {r['rss_mib_mean']:.0f} ({r['rss_mib_peak']:.0f}) | "
                     f"{r['serve_cpu_percent']:.0f} | {r['driver_cpu_percent']:.0f} | {r['load_before'][0]:.2f} -> "
                     f"{r['load_after'][0]:.2f} |")
    lines += ["", "Per stream:", "", "| round | scanners | serve | stream | fps | sent fps | p50 ms | p99 ms |",
              "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        for s in r["streams"]:
            lines.append(f"| {r.get('round', 1)} | {r['scanners']} | {r['mode']} | {s['stream']} | {s['fps']:.1f} | "
                         f"{s['sent_fps']:.1f} | "
                         f"{s['latency_p50_ms']:.1f} | {s['latency_p99_ms']:.1f} |")
    batches = report.get("model_batches")
    if batches:
        lines += ["", "The model alone (as serve loads it, same threads), median of 60 calls of each size, "
                  "interleaved: what batching the streams' frames could save when they do arrive together:", "",
                  "| frames per call | ms per call | ms per frame |", "|---:|---:|---:|"]
        for size, row in batches.items():
            lines.append(f"| {size} | {row['ms_per_call']:.2f} | {row['ms_per_frame']:.2f} |")
        for more in report.get("model_batches_more", []):
            lines.append("\nThe same before the later rounds (" + more["date"] + "), ms per frame for 1, 2, 4 frames per "
                         "call: " + ", ".join(f"{more[k]['ms_per_frame']:.2f}" for k in ("1", "2", "4")))
    calls = [(r.get("round", 1), r["scanners"], r["mode"], r.get("model_calls")) for r in report["runs"]
             if r.get("model_calls")]
    if calls:
        lines += ["", "What the one-process serve reported at exit (its whole run, warm-up included):", ""]
        lines += [f"- round {k}, {n} scanner(s), {mode}: `{line}`" for k, n, mode, line in calls]
    lines += ["", report.get("notes", "").strip(), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=25.0, help="measured seconds per configuration")
    parser.add_argument("--scanners", default="1,2,4")
    parser.add_argument("--modes", default="separate,multi,multi+batch",
                        help="which of separate, multi, multi+batch to run (multi+batch only with 2+ scanners)")
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, in turn")
    parser.add_argument("--out", type=Path, default=HERE / "serve_streams")
    parser.add_argument("--notes", type=Path, default=None, help="Markdown appended under the tables")
    parser.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                        help="with --render: add these reports' runs (later rounds) to --out's")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write --out's .md again from its .json (with --notes, replacing them)")
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.out.with_suffix(".json").read_text())
        for extra in args.merge:  # more rounds measured separately: their runs join the table, round numbered on
            more = json.loads(Path(extra).read_text())
            first = max(r.get("round", 1) for r in report["runs"])
            for run in more["runs"]:
                run["round"] = first + run.get("round", 1)
                run["date"] = more["date"]
            report["runs"] += more["runs"]
            report.setdefault("model_batches_more", []).append({"date": more["date"], **more["model_batches"]})
        if args.merge:
            args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        if args.notes:
            report["notes"] = args.notes.read_text()
            args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(markdown(report))
        return 0

    from NerveSegLogic.inference.backends import DEFAULT_THREADS
    from NerveSegLogic.inference.loading import resolve_backend
    from NerveSegLogic.models import registry

    import logging

    logging.basicConfig(level=logging.ERROR)  # the clients' reconnect chatter while a serve starts or stops
    model = registry.default_name()
    frames = load_frames(60)
    batches = model_batches(frames)
    print(f"model alone: {batches}", flush=True)
    runs = []
    wanted = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="serve-streams-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for scanners in [int(v) for v in args.scanners.split(",")]:
                modes = [m for m in ("separate", "multi", "multi+batch") if m in wanted
                         and (m != "multi+batch" or scanners > 1)]
                for mode in modes:
                    print(f"round {round_}: {scanners} scanner(s), {mode} ...", flush=True)
                    run = run_config(scanners, mode, frames, args.seconds, Path(tmp))
                    run["round"] = round_
                    runs.append(run)
                    print(f"  fps/stream {run['fps_per_stream_mean']:.1f} (min {run['fps_per_stream_min']:.1f}), "
                          f"p50 {run['latency_p50_ms']:.1f} ms, p99 {run['latency_p99_ms']:.1f} ms, "
                          f"RSS {run['rss_mib_mean']:.0f} MiB, serve CPU {run['serve_cpu_percent']:.0f} %, "
                          f"load {run['load_after'][0]:.2f}", flush=True)
                    if mode != "separate":
                        last = Path(tmp) / f"{scanners}-{mode}-0.log"
                        model_line = [line for line in last.read_text().splitlines() if line.startswith("model:")]
                        run["model_calls"] = model_line[-1] if model_line else None
                        print(f"  {run['model_calls']}", flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cores": os.cpu_count(),
              "model": model, "backend": resolve_backend(registry.card(model), "auto", "cpu"),
              "threads": DEFAULT_THREADS, "seconds": args.seconds, "fps": FPS, "runs": runs,
              "model_batches": batches,
              "notes": args.notes.read_text() if args.notes else ""}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
