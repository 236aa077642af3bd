"""``nerveseg serve``: headless segmentation server, IGTL images in, IGTL labelmaps out."""

from __future__ import annotations

import argparse

from ..igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME, LABEL_DEVICE_NAME, SERVE_PORT
from ..inference.backends import BACKEND_CHOICES, DEFAULT_THREADS, thread_count
from ..imaging.region import REGION_HELP, region_argument

DESCRIPTION = f"""\
Headless form of the live path, for a GPU (or CPU) box serving Slicer laptops:
receives OpenIGTLink IMAGE messages from PLUS (or any IGTL server) at --input, segments the newest frame with the
chosen model, and sends every segmentation out as an IGTL IMAGE message (device name {LABEL_DEVICE_NAME}, same geometry
and the same IGTL timestamp as the frame it was computed from, one label value per class, each class's presence
and display state in the message's metadata) to every client connected on --port. In 3D Slicer, connect OpenIGTLinkIF as a client to this port to see the labelmap.
Reconnects to the input with backoff when it goes away; Ctrl-C stops cleanly.
Several scanners, one model: give --input once per scanner with a name, HOST:PORT=NAME. Each stream has its own
newest-frame slot, steady overlay and clients: its labelmaps (device name NAME_Label) go out on its own port, --port
for the first stream, --port + 1 for the second and so on (or the port given as HOST:PORT=NAME@PORT). The model runs
one frame at a time, first come first served, so a stalled or misbehaving scanner does not hold up the others.
Research use only, not for clinical decisions."""

EPILOG = f"""\
defaults: --port {SERVE_PORT} on --host 127.0.0.1 (this machine only; 0.0.0.0 serves the network, best with --allow),
          --input-timeout 10 s, --model the registry's default, --device any IMAGE (whatever its device name),
          --backend auto (ONNX Runtime on a CPU, torch on a GPU), --compute auto (CUDA when present, else CPU).
example:
  nerveseg serve --input 127.0.0.1:{DEFAULT_PORT} --port {SERVE_PORT}
  nerveseg serve --input plus-host:{DEFAULT_PORT} --port {SERVE_PORT} --model smistad-unet --device {IMAGE_DEVICE_NAME}
  nerveseg serve --input 127.0.0.1:{DEFAULT_PORT} --host 0.0.0.0 --allow 192.168.1.20,192.168.1.21
  nerveseg serve --input 127.0.0.1:{DEFAULT_PORT} --region 120,80,640,480   # only the image of a frame grabber's video
  nerveseg serve --input 127.0.0.1:{DEFAULT_PORT} --region auto
  nerveseg serve --input 127.0.0.1:{DEFAULT_PORT} --no-steady   # each frame's own answer, no smoothing across frames
  nerveseg serve --input or1-plus:{DEFAULT_PORT}=OR1 --input or2-plus:{DEFAULT_PORT}=OR2 --port {SERVE_PORT}
                 # OR1's labelmaps (OR1_Label) on port {SERVE_PORT}, OR2's (OR2_Label) on {SERVE_PORT + 1}"""


def parse_host_port(text: str):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT}), got {text!r}")
    return host, int(port)


def input_stream(text: str):
    """One --input: HOST:PORT, HOST:PORT=NAME or HOST:PORT=NAME@OUTPUT_PORT (live_serve_streams.StreamInput)."""
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from ..live.serve_streams import parse_input

    try:
        return parse_input(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def port_number(text: str) -> int:
    """A TCP port 0..65535 (0: any free one)."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0..65535, got {text!r}")
    return int(text)


def timeout_seconds(text: str) -> float:
    """A positive, finite number of seconds (0 or 'off': never time out, returned as 0.0)."""
    if text.strip().lower() in ("0", "off", "none"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds (or 0 for never), got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="receive IGTL images, send segmentations back out as IGTL images",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=input_stream, action="append", metavar="HOST:PORT[=NAME]",
                        help=f"the IGTL server to receive images from (PLUS: port {DEFAULT_PORT}); once per "
                             "scanner, each named (HOST:PORT=NAME, optionally =NAME@PORT for its output port), to "
                             "serve several scanners with one model")
    parser.add_argument("--port", type=port_number, default=SERVE_PORT,
                        help="port that clients connect to (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--allow", default=None, metavar="ADDRESSES",
                        help="only these client addresses or networks may connect, comma-separated "
                             "(e.g. 10.0.0.5,192.168.1.0/24; default: any that can reach --host)")
    parser.add_argument("--input-timeout", type=timeout_seconds, default=10.0, metavar="SECONDS",
                        help="no message from --input for this long is reported and the input reconnected "
                             "(default: %(default)s; 0: wait for ever)")
    parser.add_argument("--model", default=None, help="registered model name (default: the registry's default)")
    parser.add_argument("--device", default=None, metavar="NAME",
                        help="only segment IMAGE messages of this IGTL device name (default: any)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="auto: ONNX Runtime for a semantic model on the CPU (INT8 where the card allows), "
                             "else torch (default: %(default)s)")
    parser.add_argument("--threads", type=thread_count, default=DEFAULT_THREADS,
                        help="intra-op threads of ONNX Runtime and torch; 0: one per core (default: %(default)s, one "
                             "core less than this machine has: measured in benchmarks/speed/threads.md)")
    parser.add_argument("--compute", default="auto", help="torch device: auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=0,
                        help="stop after this many results, all streams together (default: run forever)")
    parser.add_argument("--region", type=region_argument, default=None, metavar="X,Y,W,H|auto", help=REGION_HELP)
    parser.add_argument("--steady", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the overlay steady across frames: a short motion-compensated moving average of "
                             "the class probabilities, sticky outlines, a structure shown after 2 frames and hidden "
                             "after 5 (--no-steady: each frame's own answer). Either way each labelmap carries every "
                             "class's presence and display state as IGTL metadata (NerveSeg.presence.<class>, "
                             "NerveSeg.state.<class>) (default: on)")
    parser.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=True,
                        help="send each class's presence and state with every labelmap as IGTL metadata (OpenIGTLink "
                             "header version 2, read by OpenIGTLink 3 and later, e.g. Slicer's OpenIGTLinkIF and "
                             "NerveSeg's remote mode); --no-metadata sends version 1 messages for clients built on "
                             "an older OpenIGTLink, which cannot read version 2 (default: on)")
    parser.add_argument("--stream-batch", action=argparse.BooleanOptionalAction, default=False,
                        help="with several inputs, run the frames of the streams that wait for the model at the same "
                             "moment as one batch (default: off; on 2 CPU cores no consistent gain: "
                             "benchmarks/speed/serve_streams.md)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..live.serve import ServeOptions, run_serve
    from ..live.serve_streams import resolve_streams, run_serve_streams

    inputs = args.input
    single = len(inputs) == 1 and inputs[0].name is None and inputs[0].output_port is None
    # a bad name, a name used twice, two streams on one port: refused here, before any model is loaded
    streams = None if single else resolve_streams(inputs, args.port)
    from ..stream.sender import parse_allow_list

    parse_allow_list(args.allow)  # a bad entry fails here with its name, before any model is loaded
    options = ServeOptions(input_host=inputs[0].host, input_port=inputs[0].port, port=args.port, host=args.host,
                           model=args.model, allowed_clients=args.allow,
                           input_idle_timeout_s=args.input_timeout or None, device_name=args.device,
                           backend=args.backend, compute=args.compute, threads=args.threads, max_results=args.frames,
                           region=args.region, steady=args.steady, metadata=args.metadata)
    if single:  # one unnamed input: the plain serve, as it always was
        run_serve(options)
    else:
        run_serve_streams(options, streams, batch=args.stream_batch)
    return 0
