"""ONNX Runtime ms per frame of one registered model at several input sizes (random weights, batch 1).

Speed of a semantic model does not depend on its weights; this says what a smaller input would buy before anyone
trains at it. Prints one line per size and the load average (other jobs on a shared machine inflate every figure).

    .venv/bin/python benchmarks/speed/bench_onnx_sizes.py --model effnet-unet --sizes 256 224 192 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 224, 192])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numpy as np
    import onnxruntime as ort
    import torch

    from NerveSegLogic.models import registry

    torch.set_num_threads(args.threads)
    card = registry.card(args.model)
    print(f"{args.model}, ONNX Runtime {ort.__version__}, {args.threads} threads, load before "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    for size in args.sizes:
        data = card.to_json()
        data["input"] = dict(data["input"], size=[size, size])
        sized = type(card).from_dict(data)
        torch.manual_seed(0)
        model = registry.build_from_card(sized).eval()
        with tempfile.TemporaryDirectory() as folder:
            path = registry.export_onnx(model, Path(folder) / "model.onnx", card=sized)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {registry.ONNX_INPUT: np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)}
        for _ in range(5):
            session.run(None, feed)
        samples = []
        for _ in range(args.runs):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - start) * 1000.0)
        deciles = statistics.quantiles(samples, n=10)
        print(f"{size}x{size}: median {statistics.median(samples):.1f} ms (p10 {deciles[0]:.1f}, p90 "
              f"{deciles[-1]:.1f}), load " + " ".join(f"{v:.2f}" for v in os.getloadavg()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
