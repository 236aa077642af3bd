"""Inference speed of every registered model: torch against ONNX Runtime, CPU, batch 1, at the card's input size.

Each model is built with random weights (speed of the semantic models does not depend on the weights; for the
instance model it depends on how many detections reach the mask head, so that count is reported), warmed up,
then timed N times; the report gives the median and the 10th/90th percentiles in ms per frame.

    .venv/bin/python benchmarks/speed/bench_models.py                      # all models, 2 threads, writes models.md
    .venv/bin/python benchmarks/speed/bench_models.py --models sa-unet --runs 50
    .venv/bin/python benchmarks/speed/bench_models.py --write-cards        # also store the CPU ms in each card's "speed"
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]

from NerveSegLogic.models import registry  # noqa: E402  (after the path set-up, so it runs from a checkout)
from NerveSegLogic.models.card import write_card  # noqa: E402
from NerveSegLogic.testing.machine import cpu_name  # noqa: E402


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def summarise(samples_s: List[float]) -> Dict[str, float]:
    ms = sorted(s * 1000.0 for s in samples_s)
    deciles = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [ms[0]] * 9
    return {"median": statistics.median(ms), "p10": deciles[0], "p90": deciles[-1]}


def time_calls(call, warmup: int, runs: int) -> List[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def bench_model(name: str, threads: int, warmup: int, runs: int, onnx: bool, workdir: Path) -> Dict:
    import numpy as np
    import torch

    card = registry.card(name)
    torch.manual_seed(0)
    model = registry.build(name).eval()
    x = torch.rand(1, card.input.channels, card.input.height, card.input.width)
    row: Dict = {"name": name, "task": card.task, "input": f"{card.input.height}x{card.input.width}",
                 "parameters": sum(p.numel() for p in model.parameters())}
    with torch.inference_mode():
        if card.task == "semantic":
            row["torch"] = summarise(time_calls(lambda: torch.softmax(model(x), dim=1), warmup, runs))
        else:
            row["detections"] = int(model(x)[0]["boxes"].shape[0])
            row["torch"] = summarise(time_calls(lambda: model(x), warmup, runs))
    if onnx and card.task == "semantic":
        import onnxruntime as ort

        path = registry.export_onnx(model, workdir / f"{name}.onnx", card=card)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy().astype(np.float32)}
        row["onnxruntime"] = summarise(time_calls(lambda: session.run(None, feed), warmup, runs))
    return row


def write_report(rows: List[Dict], path: Path, args, started: str, load_before: str, load_after: str) -> None:
    import onnxruntime
    import torch

    lines = [
        "# Model inference speed (CPU)",
        "",
        f"- date: {started} (UTC)",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs visible, {platform.system()} {platform.release()}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}",
        f"- settings: {args.threads} CPU threads (torch.set_num_threads / ORT intra-op), batch 1, "
        f"{args.warmup} warm-up runs, {args.runs} timed runs, random weights, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}",
        f"- load average (1, 5, 15 min) before / after: {load_before} / {load_after} "
        "(other jobs share this machine; a load above the thread count inflates every figure)",
        f"- command: `{' '.join(['.venv/bin/python', 'benchmarks/speed/bench_models.py'] + sys.argv[1:])}`",
        "- GPU: none on this machine; not measured.",
        "",
        "ms per frame, median (p10-p90). torch: model forward + softmax; ONNX Runtime: the exported graph "
        "(softmax inside). Instance models are torch only (not exported to ONNX).",
        "",
        "| model | task | input | parameters | torch ms | ONNX Runtime ms | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        def cell(key: str) -> str:
            value = row.get(key)
            return f"{value['median']:.1f} ({value['p10']:.1f}-{value['p90']:.1f})" if value else "n/a"

        note = f"{row['detections']} detections reach the mask head" if "detections" in row else ""
        lines.append(f"| {row['name']} | {row['task']} | {row['input']} | {row['parameters'] / 1e6:.2f} M | "
                     f"{cell('torch')} | {cell('onnxruntime')} | {note} |")
    lines += ["", "Paper figures for comparison (their hardware, not ours): Smistad et al. ~31 ms/frame on a laptop "
              "(FAST, Clarius L15 HD); Kim et al. 9.9 ms/image on an RTX 3090.", ""]
    path.write_text("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="model names (default: all registered)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend (default 20)")
    parser.add_argument("--no-onnx", action="store_true", help="time torch only")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "models.md", help="report file")
    parser.add_argument("--write-cards", action="store_true", help="store the measured CPU ms in each card's speed")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "inherit"), default="PASSIVE",
                        help="OMP_WAIT_POLICY for torch's OpenMP threads (default PASSIVE: with the default "
                             "spin-waiting, 2 torch threads on a busy 2-core machine ran up to 10x slower); "
                             "'inherit' keeps the environment's")
    args = parser.parse_args(argv)

    if args.omp_wait_policy != "inherit":  # must be set before torch (and its OpenMP runtime) loads
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    torch.set_num_threads(args.threads)
    names = args.models or registry.names()
    started = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            row = bench_model(name, args.threads, args.warmup, args.runs, not args.no_onnx, Path(workdir))
            rows.append(row)
            onnx_ms = row.get("onnxruntime", {}).get("median")
            print(f"{name:16s} torch {row['torch']['median']:8.1f} ms   onnxruntime "
                  f"{onnx_ms if onnx_ms is None else round(onnx_ms, 1)} ms", flush=True)
    load_after = load_average()
    write_report(rows, args.out, args, started, load_before, load_after)
    print(f"wrote {args.out}")
    if args.write_cards:
        for row in rows:
            card = registry.card(row["name"])
            backends = {"torch": row["torch"]["median"]}
            if "onnxruntime" in row:
                backends["onnxruntime"] = row["onnxruntime"]["median"]
            best = min(backends, key=backends.get)
            speed = {"cpu_ms_per_frame": round(backends[best], 1), "cpu_backend": best,
                     "torch_cpu_ms": round(backends["torch"], 1),
                     "onnxruntime_cpu_ms": round(backends["onnxruntime"], 1) if "onnxruntime" in backends else None,
                     "cpu_threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch": 1, "input": [card.input.height, card.input.width],
                     "cpu": cpu_name(), "load_average_before": load_before, "measured_utc": started,
                     "command": "benchmarks/speed/bench_models.py"}
            if "detections" in row:
                speed["detections_timed"] = row["detections"]
            write_card(card.with_updates(speed=speed).to_json(), card.path)
            print(f"updated {card.path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
