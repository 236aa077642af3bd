"""``nerveseg demo``: the whole live path on the bundled sample, end to end, on this machine."""

from __future__ import annotations

import argparse

from ..igtl import IMAGE_DEVICE_NAME
from ..inference.backends import BACKEND_CHOICES, DEFAULT_THREADS, thread_count
from ..imaging.region import REGION_HELP, region_argument

DESCRIPTION = f"""\
Run the live path end to end on this machine:
  1. a replay server (the stand-in for PLUS) streams the bundled sample frames over OpenIGTLink on 127.0.0.1
     (IMAGE messages, device name {IMAGE_DEVICE_NAME}, pixel spacing in the message matrix);
  2. the receiver takes them in; the background engine segments the newest frame with the chosen model and keeps
     the overlay steady across frames (--no-steady: each frame on its own), with each class's presence;
  3. each result is written into a real MRML scene (slicer-core): a scalar volume node for the image, a
     segmentation node with one named, coloured segment per class, both recorded as Slicer sequences;
  4. on exit the scene is saved (open DIR/scene/NerveSeg.mrml in 3D Slicer), with overlay pictures, an overlay
     video, summary.json and a summary table.
Research use only, not for clinical decisions."""

EPILOG = """\
defaults: --out nerveseg-demo, --frames 48 (two passes over the 24 sample frames), --fps 25,
          --model: the registry's default model (see 'nerveseg models list').
example:
  nerveseg demo
  nerveseg demo --out /tmp/demo --frames 100 --fps 30 --model sa-unet --backend onnx
  nerveseg demo --source grabber.mp4 --region auto   # segment only the image of a frame grabber's video
  nerveseg demo --no-steady                          # each frame's own answer, no smoothing across frames"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="replay the bundled sample over OpenIGTLink, segment it live, "
                                                "save a Slicer scene", description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="nerveseg-demo", help="output folder (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=48, help="frames to stream (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0, help="replay rate, frames/s (default: %(default)s)")
    parser.add_argument("--model", default=None, help="registered model name (default: the registry's default)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="inference backend; auto: ONNX Runtime for a semantic model on the CPU (faster there; "
                             "its INT8 graph where the model card records a Dice change under 0.01), else torch "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS,
                        help="intra-op threads of ONNX Runtime and torch; 0: one per core (default: %(default)s, one "
                             "core less than this machine has: measured in benchmarks/speed/threads.md)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--source", default=None,
                        help="replay this image folder, video or .seq.nrrd instead of the bundled sample")
    parser.add_argument("--no-video", action="store_true", help="skip the overlay video")
    parser.add_argument("--region", type=region_argument, default=None, metavar="X,Y,W,H|auto", help=REGION_HELP)
    parser.add_argument("--steady", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the overlay steady across frames: a short motion-compensated moving average of "
                             "the class probabilities, sticky outlines, a structure shown after 2 frames and hidden "
                             "after 5 (--no-steady: each frame's own answer) (default: on)")
    parser.set_defaults(func=run)


def run(args) -> int:
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from ..live.demo import DemoOptions, run_demo

    if args.frames <= 0 or args.fps <= 0:
        raise SystemExit("nerveseg demo: --frames and --fps must be positive")
    options = DemoOptions(out=args.out, frames=args.frames, fps=args.fps, model=args.model, backend=args.backend,
                          threads=args.threads, device=args.device, source=args.source, video=not args.no_video,
                          region=args.region, steady=args.steady)
    summary = run_demo(options)
    return 0 if summary["frames_segmented"] > 0 else 1


