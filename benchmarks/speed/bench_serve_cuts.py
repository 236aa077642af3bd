#!/usr/bin/env python3
"""Before/after micro-benchmark of the cuts around the model in ``nerveseg serve`` (benchmarks/speed/serve_overhead.md).

Each step serve takes around the model is timed in its version at ``--before`` (a git commit; the code is read
with ``git show`` and loaded beside the current one) and in the working tree, interleaved: every round times
both versions on every frame, in alternating order, so load from other jobs falls on both alike. Before timing,
the two versions' outputs are compared on every frame (they must be equal).

    step      what serve runs                                           frames
    pre       preprocess.preprocess (grey uint8 -> model input)         the 24 sample frames at 580x420
    post      smooth_labelmap + remove_small_components                 their probabilities from unet (auto backend)
    replay    the replay server's frame encoding (before: encode_image,   the same frames
              or encode_frame_message where --before has it;
              now: codec.encode_frame_parts, headers + the frame's own pixels)
    send      the labelmap's encoding (before: sender.encode_labelmap;  their labelmaps
              now: codec.encode_frame_parts, as serve sends it)

    .venv/bin/python benchmarks/speed/bench_serve_cuts.py --before ddce096 --rounds 7               # back to back
    .venv/bin/python benchmarks/speed/bench_serve_cuts.py --before ddce096 --rounds 5 --gap-ms 10   # cold, as live
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import types
from dataclasses import astuple
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import numpy as np  # noqa: E402


def load_version(commit: str, relative: str):
    """The module at ``relative`` as it was at ``commit``, loaded under a private name in its own package (so its
    relative imports resolve to the current package)."""
    source = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    package = ".".join(Path(relative).with_suffix("").parts[:-1])
    __import__(package)
    module = types.ModuleType(f"{package}._before_{Path(relative).stem}")
    module.__package__ = package
    module.__file__ = relative
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:{relative}", "exec"), module.__dict__)
    return module


def joined(parts) -> bytes:
    """A message in parts (codec.encode_frame_parts: what serve and the replay server send since 2026-12-02) as one
    byte string, to compare with a one-buffer encoder's."""
    return b"".join(bytes(part) for part in parts) if isinstance(parts, tuple) else bytes(parts)


def frames():
    import cv2

    from NerveSegLogic.resources import sample_dir

    out = []
    for path in sorted((sample_dir() / "images").glob("*.png")):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        out.append(cv2.resize(image, (580, 420), interpolation=cv2.INTER_AREA))
    return out


def interleaved(variants, inputs, rounds: int, in_thread: bool, gap_s: float = 0.0):
    """{name: per-call seconds} of each variant over every input, ``rounds`` times, variants alternating; in a
    thread of its own when ``in_thread`` (serve pre- and postprocesses in its inference worker thread, where the
    allocator hands out memory differently: a fresh 1 MB array per call costs page faults on the main thread here,
    and mostly not in a worker)."""
    if in_thread:
        result = {}
        worker = threading.Thread(target=lambda: result.update(interleaved(variants, inputs, rounds, False, gap_s)))
        worker.start()
        worker.join()
        return result
    samples = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            call = variants[name]
            for item in inputs:
                if gap_s:
                    time.sleep(gap_s)
                start = time.perf_counter()
                call(item)
                samples[name].append(time.perf_counter() - start)
    return samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git commit of the code before the cuts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="sleep before each call, as serve waits for the next frame: the caches go cold "
                             "(memory-bound steps then cost several times their back-to-back time)")
    args = parser.parse_args(argv)

    from NerveSegLogic.frame import ImageGeometry
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.inference import segmenter as seg
    from NerveSegLogic.inference.segmenter import load_segmenter
    from NerveSegLogic.stream import codec

    old_pp = load_version(args.before, "NerveSegLogic/imaging/placement.py")
    old_seg = load_version(args.before, "NerveSegLogic/inference/segmenter.py")
    old_sender = load_version(args.before, "NerveSegLogic/stream/sender.py")
    old_codec = load_version(args.before, "NerveSegLogic/stream/codec.py")
    segmenter = load_segmenter(args.model, backend="auto", threads=1)
    spec, area, labels = segmenter.spec, segmenter.min_component_area, [c.label for c in segmenter.classes]
    images = frames()
    outputs = []
    for image in images:
        tensor, placement = pp.preprocess(image, spec)
        outputs.append((np.asarray(segmenter.backend.run(tensor[np.newaxis])[0]), placement))
    geometry = ImageGeometry(spacing=(0.2, 0.2, 1.0))

    def post_before(item):
        return old_pp.remove_small_components(old_seg.smooth_labelmap(*item), area, labels=labels)

    def post_after(item):  # as Segmenter._semantic does it
        return pp.remove_small_components(seg.smooth_labelmap(*item), area, labels=labels, in_place=True)

    labelmaps = [post_after(item) for item in outputs]
    if hasattr(old_codec, "encode_frame_message"):  # the replay server's encoder from 2026-12-01 to 2026-12-02
        replay_before = old_codec.encode_frame_message
    else:
        def replay_before(image, geometry, device_name, timestamp):
            return old_codec.encode_image(image, geometry, device_name=device_name, timestamp=timestamp)
    steps = {
        "pre": ({"before": lambda im: old_pp.preprocess(im, spec), "after": lambda im: pp.preprocess(im, spec)},
                images, lambda a, b: np.array_equal(a[0], b[0]) and astuple(a[1]) == astuple(b[1])),
        "post": ({"before": post_before, "after": post_after}, outputs, np.array_equal),
        "replay": ({"before": lambda im: replay_before(im, geometry, "Image_Reference", 1.0e9),
                    "after": lambda im: codec.encode_frame_parts(im, geometry, "Image_Reference", 1.0e9)},
                   images, lambda a, b: bytes(a) == joined(b)),
        "send": ({"before": lambda lm: old_sender.encode_labelmap(lm, geometry, "NerveSegLabel", 1.0e9),
                  "after": lambda lm: codec.encode_frame_parts(lm, geometry, "NerveSegLabel", 1.0e9)},
                 labelmaps, lambda a, b: bytes(a) == joined(b)),
    }
    print(f"## Interleaved micro-benchmark, before {args.before} vs the working tree, {args.rounds} rounds x "
          f"{len(images)} frames (580x420), {args.model} on {segmenter.describe()}, {args.gap_ms:g} ms before each "
          "call\n")
    print("| step | thread | identical | before p50 us | after p50 us | before p90 us | after p90 us | "
          "p50 after/before | load 1 min |\n|---|---|---|---|---|---|---|---|---|")
    for name, (variants, inputs, same) in steps.items():
        identical = all(same(variants["before"](item), variants["after"](item)) for item in inputs)
        for in_thread in (False, True):
            load = os.getloadavg()[0]
            samples = interleaved(variants, inputs, args.rounds, in_thread, args.gap_ms / 1000.0)
            us = {k: np.asarray(v) * 1e6 for k, v in samples.items()}
            p50 = {k: float(np.percentile(v, 50)) for k, v in us.items()}
            p90 = {k: float(np.percentile(v, 90)) for k, v in us.items()}
            print(f"| {name} | {'worker' if in_thread else 'main'} | {'yes' if identical else 'NO'} | "
                  f"{p50['before']:.0f} | {p50['after']:.0f} | {p90['before']:.0f} | {p90['after']:.0f} | "
                  f"{p50['after'] / p50['before']:.2f} | {load:.2f} -> {os.getloadavg()[0]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
