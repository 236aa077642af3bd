"""``nerveseg annotate correct ... prompt`` and ``nerveseg annotate embed``: promptable correction from the command
line (the argparse plumbing; the work is in :mod:`NerveSegLogic.annotate.prompt`).

    nerveseg annotate correct --store p.nsdb 12 prompt --class nerve --box 120,80,210,150 --point 160,120,+
    nerveseg annotate embed --store p.nsdb            # embed every frame now (e.g. in the background after prelabel)
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from typing import Tuple

#: None: the default promptable model (the card marked "default_promptable": true; registry.default_promptable_name)
DEFAULT_MODEL = None


def _model_args(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registered promptable model (default: the default promptable model, litemedsam-nerve "
                             "as shipped; the released weights are 'litemedsam'; 'nerveseg models list' shows live "
                             "models only)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                        help="onnx (default; graphs exported once into a cache) or torch")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: one per core)")
    parser.add_argument("--click-mode", choices=("model", "box"), default=None,
                        help="clicks as the model's point tokens ('model') or as edits of the box ('box'); default: "
                             "the model's (see benchmarks/annotation/prompted.md for which helps)")


def add_prompt_op(ops) -> None:
    """Register ``prompt`` among the operations of ``annotate correct``."""
    o = ops.add_parser("prompt", help="a class from a box and/or clicks (promptable model)",
                       description="Replace one class of FRAME's mask by what the promptable model finds from a box "
                                   "and/or include (+) and exclude (-) clicks, saved as a new 'prompt' draft with "
                                   "the prompts. Coordinates are pixels (x = column, y = row). The frame's image "
                                   "embedding is computed on first use and cached in the store.",
                       epilog="example:\n  nerveseg annotate correct --store p.nsdb 12 prompt --class nerve "
                              "--box 120,80,210,150 --point 160,120,+ --point 200,90,-",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_argument("--class", dest="prompt_class", required=True, metavar="KEY",
                   help="class key to replace, e.g. nerve or blood_vessel")
    o.add_argument("--box", type=parse_box, default=None, metavar="X0,Y0,X1,Y1",
                   help="box around the structure, corners inclusive")
    o.add_argument("--point", type=parse_point, action="append", default=[], dest="prompt_points",
                   metavar="X,Y,+|-", help="a click: + inside the structure, - outside (repeatable)")
    _model_args(o)


def add_embed_action(actions) -> None:
    """Register ``annotate embed``."""
    p = actions.add_parser("embed", help="cache the prompt model's embedding of every frame",
                           description="Compute the promptable model's image embedding of every frame that has none "
                                       "cached (float16 in the store, keyed by the model's sha256), so that prompts "
                                       "cost only the decoder. Safe to run beside 'prelabel' or a review.",
                           epilog="example:\n  nerveseg annotate embed --store project.nsdb &",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="annotation store file (.nsdb)")
    _model_args(p)


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """argparse type for --box X0,Y0,X1,Y1 (finite pixels, x0 <= x1, y0 <= y1)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (four numbers of pixels), got {text!r}")
    if values[2] < values[0] or values[3] < values[1]:
        raise argparse.ArgumentTypeError(f"expected the top-left corner first (x0 <= x1, y0 <= y1), got {text!r}")
    return values  # type: ignore[return-value]


def parse_point(text: str) -> Tuple[float, float, bool]:
    """argparse type for --point X,Y,+ (include) or X,Y,- (exclude)."""
    parts = text.split(",")
    try:
        x, y = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        x = y = float("nan")
    if len(parts) != 3 or parts[2].strip() not in ("+", "-") or not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"expected X,Y,+ (include) or X,Y,- (exclude), got {text!r}")
    return x, y, parts[2].strip() == "+"


@functools.lru_cache(maxsize=2)
def load_model(name, backend: str, threads: int):
    """The promptable model (``name`` None: the default one), loaded once per process (a second prompt in the same
    process reuses it)."""
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from NerveSegLogic.inference.promptable import PromptableSegmenter

    return PromptableSegmenter.from_name(name, backend=backend, threads=threads or None)


def run_prompt(store, args, author: str) -> int:
    """``annotate correct FRAME prompt``: 0 when saved or nothing changed, 1 for an unusable prompt or model."""
    from NerveSegLogic.annotate.corrections import NothingChanged
    from NerveSegLogic.annotate.prompt import FramePrompter, describe_prompt
    from NerveSegLogic.inference.promptable import PromptError

    if args.box is None and not any(p[2] for p in args.prompt_points):
        print("error: prompt: give --box X0,Y0,X1,Y1 and/or at least one --point X,Y,+", file=sys.stderr)
        return 1
    record = store.frame(args.frame)  # KeyError names the frame before the model loads
    try:
        model = load_model(args.model, args.backend, args.threads)
    except (RuntimeError, ValueError) as error:  # not promptable, weights missing or corrupt
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.click_mode:
        model.click_mode = args.click_mode
    prompter = FramePrompter(store, model)
    current = store.current(record.id)
    try:
        version = prompter.correct(record.id, args.prompt_class, author, current.id if current else None,
                                   box=args.box, points=args.prompt_points)
    except PromptError as error:
        print(f"error: frame {record.id}: {error}", file=sys.stderr)
        return 1
    except NothingChanged as unchanged:
        print(f"frame {record.id}: {unchanged}")
        return 0
    changed = int((version.mask != (current.mask if current else 0)).sum())
    cache = "embedding computed and cached" if prompter.computed else "cached embedding"
    print(f"frame {record.id}: version {version.id} ({describe_prompt(store.prompts(version.id))}; "
          f"{changed} pixels changed; {cache})")
    return 0


def run_embed(store, args) -> int:
    """``annotate embed``: embed every uncached frame, with a progress line."""
    from NerveSegLogic.annotate.prompt import FramePrompter

    try:
        model = load_model(args.model, args.backend, args.threads)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    prompter = FramePrompter(store, model)

    def progress(done: int, total: int) -> None:
        print(f"\rembedding {done}/{total}", end="", file=sys.stderr, flush=True)

    computed = prompter.embed_frames(progress=progress)
    print(file=sys.stderr)
    print(f"{computed} frames embedded with {model.card.name} (sha256 {model.model_sha256[:12]}); "
          f"{store.frame_count() - computed} were cached already")
    return 0

