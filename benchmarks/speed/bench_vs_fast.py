#!/usr/bin/env python3
"""NerveSeg against FAST on the same IGTL stream and the same ONNX graph: frames, fps, latency, CPU, memory.

One command:

    .venv/bin/python benchmarks/speed/bench_vs_fast.py                      # 2 rounds of 300 frames, writes vs_fast.md
    .venv/bin/python benchmarks/speed/bench_vs_fast.py --frames 900 --rounds 3 --model unet
    .venv/bin/python benchmarks/speed/bench_vs_fast.py --int8 --report benchmarks/speed/vs_fast_int8.md   # the INT8 graph

What it does:
- installs what FAST (PyPI ``pyfast``) needs: the Debian packages in DEBIAN_PACKAGES (apt-get, as root, only when
  missing) and a virtual environment of its own with ``pyfast`` (``--fast-venv``; made once, reused);
- exports the model to ONNX once (NerveSeg's ONNX cache, keyed by the weights' sha256): both systems load this file;
- per round and system (the order alternates between rounds), our replay server (the stand-in for PLUS) sends
  ``--frames`` grey 580x420 uint8 frames (the bundled usgra-seg sample) at ``--fps`` over OpenIGTLink, recording the
  IGTL timestamp of every frame it sends:
  * NerveSeg: ``nerveseg serve --backend onnx`` in its own process; this script connects to its output port as an
    IGTL client and takes every labelmap (its IGTL timestamp is the frame's);
  * FAST: ``OpenIGTLinkStreamer -> SegmentationNetwork`` (ONNX Runtime engine) in its own process, read with
    ``DataStream(streamer, network)``; the streamer's image's ``getCreationTimestamp()`` carries the frame's IGTL
    timestamp (in whole milliseconds; the segmentation's own is 0);
- each result is matched to the frame it came from by that timestamp; latency is from the moment the replay
  server stamped the frame to the moment the result was in the receiving program (for NerveSeg that includes
  sending the labelmap back over IGTL, which FAST does not do);
- CPU % (user + system time of the system's process over the streaming window / wall time) and RSS (peak, and at
  the end) from /proc; the 1/5/15-minute load average before each run.

It is a benchmark, not a test: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

from NerveSegLogic.testing.sample_feed import FRAME_SIZE, SentLog, free_port, sample_frames as make_frames  # noqa: E402

#: What pyfast needs from Debian (USB, OpenCL on the CPU through pocl, GL/EGL and fonts for its Qt parts).
DEBIAN_PACKAGES = ("libusb-1.0-0", "ocl-icd-libopencl1", "pocl-opencl-icd", "libgl1", "libegl1", "libfontconfig1")
PYFAST_VERSION = "4.18.0"
#: After the last frame, how long to wait for results still in flight (s).
DRAIN_S = 3.0
#: A result matches a sent frame when their timestamps differ by less than this (s); frames are 33 ms apart.
MATCH_TOLERANCE_S = 0.002

# The program FAST runs (in its own virtual environment). It warms FAST up on one blank frame first (OpenCL
# kernels are built then, by pocl on the CPU), then connects to the replay server and writes one line per result:
# the creation timestamp FAST carried from the IGTL message (integer milliseconds), and the wall time when the result
# reached Python.
FAST_CLIENT = r'''
import sys, time
import numpy as np
import fast

host, port, model, out, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
width, height = int(sys.argv[6]), int(sys.argv[7])
warm = fast.SegmentationNetwork.create(model, scaleFactor=1.0 / 255.0, inferenceEngine="ONNXRuntime")
warm.setInputData(fast.Image.createFromArray(np.zeros((height, width), dtype=np.uint8)))
warm.run()
del warm
streamer = fast.OpenIGTLinkStreamer.create(host, port)
network = fast.SegmentationNetwork.create(model, scaleFactor=1.0 / 255.0, inferenceEngine="ONNXRuntime")
network.connect(streamer)
print("ready", flush=True)
with open(out, "w", buffering=1) as f:
    # the segmentation's own creation timestamp is 0: the streamer's image, of the same execution, carries the IGTL one
    for image, result in fast.DataStream(streamer, network):
        f.write(f"{image.getCreationTimestamp()!r} {time.time()!r}\n")
'''


# ----------------------------------------------------------------------------------------------- installing
def load_average() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def missing_debian_packages() -> List[str]:
    missing = []
    for package in DEBIAN_PACKAGES:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def ensure_debian_packages() -> None:
    missing = missing_debian_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench_vs_fast: FAST needs the Debian packages {' '.join(missing)}; install them "
                         f"(apt-get install {' '.join(missing)}) or run this script as root")
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def fast_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_fast_venv(venv: Path) -> Path:
    """A virtual environment with pyfast (and numpy) in ``venv``; made once and reused."""
    python = fast_python(venv)
    probe = [str(python), "-c", "import importlib.util as u, sys; "
                                "sys.exit(0 if u.find_spec('fast') and u.find_spec('numpy') else 1)"]
    if python.is_file() and subprocess.run(probe).returncode == 0:
        return python
    print(f"making FAST's virtual environment in {venv} (pyfast {PYFAST_VERSION}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"pyfast=={PYFAST_VERSION}", "numpy"], check=True)
    return python


# -------------------------------------------------------------------------------------------------- running
class ProcessMeter:
    """CPU seconds and memory of one process, from /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.rss_samples: List[int] = []

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime

    def memory(self) -> Dict[str, int]:
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values

    def sample(self) -> None:
        try:
            self.rss_samples.append(self.memory()["VmRSS"])
        except (OSError, KeyError):
            pass


def match(sent: List[float], results: List[tuple]) -> Dict:
    """Match (timestamp, arrival wall time) results to sent timestamps; latency in ms per matched frame."""
    import numpy as np

    sent_sorted = np.array(sorted(sent))
    latencies, seen, unmatched = [], set(), 0
    for stamp, arrived in results:
        i = int(np.searchsorted(sent_sorted, stamp))
        candidates = [j for j in (i - 1, i) if 0 <= j < len(sent_sorted)]
        if not candidates:
            unmatched += 1
            continue
        j = min(candidates, key=lambda k: abs(sent_sorted[k] - stamp))
        if abs(sent_sorted[j] - stamp) > MATCH_TOLERANCE_S or j in seen:
            unmatched += 1
            continue
        seen.add(j)
        latencies.append((arrived - sent_sorted[j]) * 1000.0)
    return {"segmented": len(seen), "unmatched_results": unmatched, "latency_ms": latencies}


def run_system(system: str, args, frames_dir: Path, onnx_path: Path, fast_py: Optional[Path], workdir: Path,
               backend: str = "onnx") -> Dict:
    """One run of one system ("nerveseg" or "fast") on a fresh stream; NerveSeg's serve runs ``--backend backend``."""
    from NerveSegLogic.stream.receiver import ImageReceiver
    from NerveSegLogic.stream.replay import ReplayServer

    load_before = load_average()
    input_port = free_port()
    results: List[tuple] = []
    label_client = None
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    # The replay server listens before either system starts (FAST gives up when its first connection is refused)
    # and starts its clock when the system connects.
    replay = ReplayServer(frames_dir, host="127.0.0.1", port=input_port, fps=args.fps, loop=True,
                          max_frames=args.frames, wait_for_client=True)
    log_path = workdir / f"{system}-{time.monotonic_ns()}.log"
    process = None
    with SentLog() as sent, open(log_path, "w") as log:
        replay.start()
        try:
            if system == "nerveseg":
                output_port = free_port()
                command = [sys.executable, "-m", "NerveSegLogic.cli", "serve", "--input", f"127.0.0.1:{input_port}",
                           "--port", str(output_port), "--host", "127.0.0.1", "--model", args.model,
                           "--backend", backend, "--threads", str(args.threads)]
                process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
                label_client = ImageReceiver("127.0.0.1", output_port, device_name="NerveSegLabel",
                                             reconnect_max_s=0.2, idle_timeout_s=None,
                                             on_frame=lambda f: results.append((f.igtl_timestamp, f.received_wall)))
                label_client.start()
                if not label_client.connected.wait(120):
                    raise RuntimeError(f"nerveseg serve did not open its port: {log_path.read_text()[-2000:]}")
            else:
                out_file = workdir / f"fast-{time.monotonic_ns()}.txt"
                script = workdir / "fast_client.py"
                script.write_text(FAST_CLIENT)
                env["OMP_NUM_THREADS"] = str(args.threads)
                command = [str(fast_py), str(script), "127.0.0.1", str(input_port), str(onnx_path), str(out_file),
                           str(args.threads), str(FRAME_SIZE[0]), str(FRAME_SIZE[1])]
                process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
            meter = ProcessMeter(process.pid)
            deadline = time.perf_counter() + 180
            while replay.frames_sent == 0 and process.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.01)
            if process.poll() is not None or replay.frames_sent == 0:
                raise RuntimeError(f"{system} ended or never connected before the first frame (exit "
                                   f"{process.poll()}): {log_path.read_text(errors='replace')[-3000:]}")
            cpu_start, wall_start = meter.cpu_seconds(), time.perf_counter()
            stop_sampling = threading.Event()

            def sampler():
                while not stop_sampling.wait(0.25):
                    meter.sample()

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            replay.wait_done(args.frames / args.fps + 60)
            time.sleep(DRAIN_S)
            cpu_s, wall_s = meter.cpu_seconds() - cpu_start, time.perf_counter() - wall_start
            stop_sampling.set()
            thread.join()
            memory = meter.memory()
            frames_sent = replay.frames_sent
        finally:
            replay.stop()
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if label_client is not None:
                label_client.stop()
    tail = log_path.read_text(errors="replace")
    if system == "fast":
        results = [tuple(float(v) for v in line.split()) for line in out_file.read_text().splitlines() if line]
        stamps = [r[0] for r in results]
        # FAST keeps the IGTL timestamp in milliseconds; convert when it is (a number 1000x the epoch seconds)
        if stamps and statistics.median(stamps) > 1e11:
            results = [(stamp / 1000.0, arrived) for stamp, arrived in results]
    matched = match(sent.timestamps[:frames_sent] if frames_sent else sent.timestamps, results)
    latencies = matched["latency_ms"]
    import numpy as np

    def pct(q):
        return round(float(np.percentile(latencies, q)), 1) if latencies else None

    return {
        "system": system, "frames_sent": frames_sent, "segmented": matched["segmented"],
        "lost": frames_sent - matched["segmented"], "unmatched_results": matched["unmatched_results"],
        "fps": round(matched["segmented"] / (frames_sent / args.fps), 1) if frames_sent else 0.0,
        "latency_p50_ms": pct(50), "latency_p95_ms": pct(95), "latency_p99_ms": pct(99),
        "cpu_percent": round(100.0 * cpu_s / wall_s, 1), "rss_peak_mb": round(memory.get("VmHWM", 0) / 2**20, 1),
        "rss_end_mb": round(memory.get("VmRSS", 0) / 2**20, 1),
        "load_average_before": load_before, "load_average_after": load_average(),
        "latencies_ms": [round(v, 2) for v in latencies], "log_tail": (tail or "")[-600:],
    }


# ------------------------------------------------------------------------------------------------- reporting
def summarise(runs: List[Dict]) -> Dict[str, Dict]:
    import numpy as np

    out = {}
    for system in ("nerveseg", "fast"):
        mine = [r for r in runs if r["system"] == system]
        if not mine:
            continue
        latencies = [v for r in mine for v in r["latencies_ms"]]
        sent = sum(r["frames_sent"] for r in mine)
        segmented = sum(r["segmented"] for r in mine)
        out[system] = {
            "runs": len(mine), "frames_sent": sent, "segmented": segmented, "lost": sent - segmented,
            "fps": round(statistics.mean(r["fps"] for r in mine), 1),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "latency_p95_ms": round(float(np.percentile(latencies, 95)), 1) if latencies else None,
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
            "cpu_percent": round(statistics.mean(r["cpu_percent"] for r in mine), 1),
            # CPU time per segmented frame: a system that segments fewer frames also spends less CPU
            "cpu_ms_per_frame": round(10.0 * statistics.mean(r["cpu_percent"] for r in mine)
                                      / max(statistics.mean(r["fps"] for r in mine), 1e-9), 1),
            "rss_peak_mb": round(max(r["rss_peak_mb"] for r in mine), 1),
        }
    return out


def plot(runs: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"nerveseg": "tab:blue", "fast": "tab:orange"}
    labels = {"nerveseg": "NerveSeg serve", "fast": "FAST"}
    for system in ("nerveseg", "fast"):
        values = np.sort([v for r in runs if r["system"] == system for v in r["latencies_ms"]])
        if len(values) == 0:
            continue
        left.plot(values, np.arange(1, len(values) + 1) / len(values), color=colours[system], label=labels[system])
        for k, run in enumerate(r for r in runs if r["system"] == system):
            right.plot(run["latencies_ms"], color=colours[system], alpha=0.7, linewidth=0.8,
                       label=labels[system] if k == 0 else None)
    left.set_xlabel("latency, frame sent to result (ms)")
    left.set_ylabel("fraction of segmented frames")
    left.set_title("latency distribution (all rounds)")
    left.grid(alpha=0.3)
    left.legend()
    right.set_xlabel("segmented frame (in order)")
    right.set_ylabel("latency (ms)")
    right.set_title("latency over each run")
    right.grid(alpha=0.3)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(runs: List[Dict], summary: Dict, args, command: str, onnx_path: Path, plot_name: str) -> str:
    def cell(value, unit=""):
        return "-" if value is None else f"{value}{unit}"

    def ratio(key, inverse=False):
        a, b = summary.get("nerveseg", {}).get(key), summary.get("fast", {}).get(key)
        if not a or not b:
            return "-"
        return f"{(b / a if inverse else a / b):.2f}"

    from NerveSegLogic.testing.machine import cpu_name, load_note

    cpu = cpu_name()
    lines = [
        "# NerveSeg against FAST: the same IGTL stream, the same ONNX graph",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores, no GPU; "
        + load_note(r["load_average_before"][0] for r in runs) + "; the load before each run is in the table of runs",
        f"- date (UTC): {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M')}; command: `{command}`",
        f"- stream: our replay server, {args.frames} grey {FRAME_SIZE[0]}x{FRAME_SIZE[1]} uint8 frames (the "
        f"bundled usgra-seg sample, resized) at {args.fps:g} fps over OpenIGTLink on 127.0.0.1; {args.rounds} "
        "rounds, the order of the systems alternating",
        f"- model: `{args.model}`, one exported graph (`{onnx_path.name}`) loaded by both",
        f"- NerveSeg: `nerveseg serve --backend {'onnx-int8' if getattr(args, 'int8', False) else 'onnx'} "
        f"--threads {args.threads}` (ONNX Runtime, "
        f"{args.threads} intra-op threads); latency until the labelmap came back to this script over IGTL",
        f"- FAST: pyfast {PYFAST_VERSION}, `OpenIGTLinkStreamer -> SegmentationNetwork` (ONNX Runtime engine, "
        "scale 1/255, OpenCL on the CPU through pocl), warmed up on one frame first; latency until the result "
        f"reached Python; OMP_NUM_THREADS={args.threads} (FAST sets its own ONNX Runtime threads)",
        "- matching: every result to the sent frame with the same IGTL timestamp (FAST: "
        "`getCreationTimestamp()`); lost = sent - segmented; fps = segmented / stream duration",
        "- CPU %: the system's process only (100 % = one core), over the stream; RSS: its peak resident memory",
        "- not the same work after the model: NerveSeg argmaxes at the model's size, restores the frame's size, "
        "drops regions under 154 px and sends the labelmap over IGTL; FAST thresholds and resizes back. "
        "Preprocessing differs too (NerveSeg keeps the aspect with fit-width/pad; FAST stretches to the input)",
        f"- load: the 1-minute load average was {min(r['load_average_before'][0] for r in runs):g}-"
        f"{max(r['load_average_before'][0] for r in runs):g} before the runs, on {os.cpu_count()} cores"
        + (": both systems ran short of CPU, so read the ratios more than the absolute figures"
           if max(r['load_average_before'][0] for r in runs) > (os.cpu_count() or 1) else ""),
        "",
        "## Summary",
        "",
        "| | frames sent | segmented | lost | fps | latency p50 ms | p95 ms | p99 ms | CPU % | CPU ms per segmented "
        "frame | RSS peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"nerveseg": "NerveSeg", "fast": "FAST"}
    for system, s in summary.items():
        lines.append(f"| {names[system]} | {s['frames_sent']} | {s['segmented']} | {s['lost']} | {s['fps']} | "
                     f"{cell(s['latency_p50_ms'])} | {cell(s['latency_p95_ms'])} | {cell(s['latency_p99_ms'])} | "
                     f"{s['cpu_percent']} | {s['cpu_ms_per_frame']} | {s['rss_peak_mb']} |")
    lines += [
        "",
        f"Ratios (FAST / NerveSeg; above 1: NerveSeg better): latency p50 {ratio('latency_p50_ms', True)}, "
        f"p99 {ratio('latency_p99_ms', True)}, CPU per segmented frame {ratio('cpu_ms_per_frame', True)}, "
        f"RSS {ratio('rss_peak_mb', True)}; "
        f"fps NerveSeg / FAST {ratio('fps')}.",
        "",
        f"![latency]({plot_name})",
        "",
        "## Runs (in the order they ran)",
        "",
        "| round | system | load avg before (1/5/15 min) | after | sent | segmented | lost | unmatched | fps | p50 | "
        "p95 | p99 | CPU % | RSS peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(f"| {run['round']} | {names[run['system']]} | {' '.join(map(str, run['load_average_before']))} "
                     f"| {' '.join(map(str, run['load_average_after']))} | {run['frames_sent']} | "
                     f"{run['segmented']} | {run['lost']} | {run['unmatched_results']} | {run['fps']} | "
                     f"{cell(run['latency_p50_ms'])} | {cell(run['latency_p95_ms'])} | "
                     f"{cell(run['latency_p99_ms'])} | {run['cpu_percent']} | {run['rss_peak_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="registered semantic model (default: the registry's default)")
    parser.add_argument("--frames", type=int, default=300, help="frames per run (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs both systems (default: 2)")
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default: 2)")
    parser.add_argument("--systems", default="nerveseg,fast", help="comma-separated: nerveseg, fast")
    parser.add_argument("--fast-venv", default=str(Path(tempfile.gettempdir()) / "nerveseg-fast-venv"),
                        help="FAST's virtual environment (made when missing; default: %(default)s)")
    parser.add_argument("--int8", action="store_true",
                        help="both systems load the model's INT8 graph (the one `--backend onnx-int8` and, where "
                             "the card allows, `auto` run), NerveSeg with --backend onnx-int8")
    parser.add_argument("--report", default=str(HERE / "vs_fast.md"))
    parser.add_argument("--report-from", default=None, metavar="JSON",
                        help="only rewrite the report and plot from a finished run's JSON (vs_fast.json)")
    args = parser.parse_args(argv)
    if args.report_from:
        saved = json.loads(Path(args.report_from).read_text())
        for key, value in saved.get("options", {}).items():
            setattr(args, key, value)
        write_outputs(saved["runs"], args, saved.get("command", "benchmarks/speed/bench_vs_fast.py"),
                      Path(saved.get("onnx", "model.onnx")))
        return 0

    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.models import registry

    args.model = args.model or registry.default_name()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - {"nerveseg", "fast"}
    if unknown:
        raise SystemExit(f"bench_vs_fast: --systems: unknown {sorted(unknown)}; expected nerveseg and/or fast")
    fast_py = None
    if "fast" in systems:
        ensure_debian_packages()
        fast_py = ensure_fast_venv(Path(args.fast_venv))
    backend = "onnx-int8" if args.int8 else "onnx"
    onnx_path = load_segmenter(args.model, backend=backend, threads=1).backend.path  # the cached graph

    command = "benchmarks/speed/bench_vs_fast.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    runs = []
    with tempfile.TemporaryDirectory(prefix="nerveseg-vs-fast-") as tmp:
        workdir = Path(tmp)
        frames_dir = workdir / "frames"
        frames_dir.mkdir()
        make_frames(frames_dir)
        for round_index in range(args.rounds):
            order = systems if round_index % 2 == 0 else list(reversed(systems))
            for system in order:
                print(f"round {round_index + 1}: {system}, load {load_average()}", flush=True)
                try:
                    run = run_system(system, args, frames_dir, onnx_path, fast_py, workdir, backend)
                except RuntimeError as error:  # FAST now and then aborts right after connecting: one retry
                    print(f"{system}: {error}\nretrying once", flush=True)
                    run = run_system(system, args, frames_dir, onnx_path, fast_py, workdir, backend)
                    run["retried"] = True
                run["round"] = round_index + 1
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in ("latencies_ms", "log_tail")}),
                      flush=True)
    write_outputs(runs, args, command.strip(), onnx_path)
    return 0


def write_outputs(runs: List[Dict], args, command: str, onnx_path: Path) -> None:
    summary = summarise(runs)
    report_path = Path(args.report)
    plot_path = report_path.with_suffix(".png")
    plot(runs, plot_path)
    report_path.write_text(report(runs, summary, args, command, onnx_path, plot_path.name))
    options = {k: getattr(args, k) for k in ("model", "frames", "fps", "rounds", "threads", "int8")}
    report_path.with_suffix(".json").write_text(json.dumps(
        {"command": command, "options": options, "onnx": str(onnx_path.name), "summary": summary,
         "runs": [{k: v for k, v in run.items() if k != "log_tail"} for run in runs]},  # logs name local paths
        indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {report_path} and {plot_path.name}")


if __name__ == "__main__":
    raise SystemExit(main())
