"""``nerveseg replay``: serve recorded ultrasound over OpenIGTLink, standing in for PLUS.

Registering imports nothing heavy; the stream package (and OpenCV, pynrrd) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME  # PLUS's default OpenIGTLink port and B-mode image device name

DESCRIPTION = f"""\
Serve recorded ultrasound frames as OpenIGTLink IMAGE messages, the way PLUS serves a live scanner, to every client
that connects (3D Slicer's OpenIGTLinkIF, 'nerveseg serve', 'nerveseg demo', any OpenIGTLink client).

Sources: a folder of PNG/JPEG/TIFF/BMP images (sorted by name), a video file (anything OpenCV opens), a Slicer
volume sequence (.seq.nrrd, spacing and origin from its header), or the bundled sample (Resources/Sample, with the
spacing in its sample.json), which is what you get without --source.

Frames go out at a fixed rate on an absolute schedule (no drift), with device name {IMAGE_DEVICE_NAME!r}, the pixel
spacing in the IGTL matrix and the send time as the IGTL timestamp. A line per second reports frames sent and
clients. Ctrl-C stops it cleanly.

Defaults: --port {DEFAULT_PORT} (PLUS's), --host 127.0.0.1 (this machine only; 0.0.0.0 serves the network),
--fps: the source's own rate (video, sequence, sample.json), else 25; grey frames; the whole source once."""

EPILOG = f"""\
examples:
  nerveseg replay                                        # the bundled sample at 25 fps on port {DEFAULT_PORT}
  nerveseg replay --source recordings/axillary.seq.nrrd --loop
  nerveseg replay --source frames/ --fps 30 --spacing 0.08 --port 18945 --frames 300
  nerveseg replay --source clip.mp4 --host 0.0.0.0 --rgb    # RGB as 3 components, like Clarius via PLUS"""


def port_number(text: str) -> int:
    """A TCP port 0..65535 (0: any free one)."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0..65535, got {text!r}")
    return int(text)


def positive_number(text: str) -> float:
    """A positive, finite number (NaN, inf, 0 and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("replay", help="serve recorded frames over OpenIGTLink (stand-in for PLUS)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", metavar="PATH", default=None,
                        help="image folder, video file or .seq.nrrd sequence (default: the bundled sample)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"TCP port to listen on, 0 for any free one (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--allow", default=None, metavar="ADDRESSES",
                        help="only these client addresses or networks may connect, comma-separated "
                             "(e.g. 10.0.0.5,192.168.1.0/24; default: any that can reach --host)")
    parser.add_argument("--fps", type=positive_number, default=None,
                        help="frames per second (default: the source's own rate, else 25)")
    parser.add_argument("--loop", action="store_true", help="start again at the end (until Ctrl-C or --frames)")
    parser.add_argument("--frames", type=int, default=None, metavar="N",
                        help="stop after N frames (default: the whole source once, or forever with --loop)")
    parser.add_argument("--device-name", default=IMAGE_DEVICE_NAME,
                        help=f"IGTL device name of the images (default {IMAGE_DEVICE_NAME}, as PLUS)")
    parser.add_argument("--spacing", type=positive_number, default=None, metavar="MM",
                        help="pixel size in mm, overriding the source's (default: the source's; 1.0 for images "
                             "and videos, which carry none)")
    parser.add_argument("--rgb", action="store_true",
                        help="send colour frames as RGB (3 components) instead of grey")
    parser.add_argument("--wait-client", action="store_true",
                        help="start the clock only when the first client connects, so it gets every frame")
    parser.set_defaults(func=run)


#: Seconds between the status lines.
STATUS_PERIOD_S = 1.0


class _CtrlCFlag:
    """Ctrl-C (SIGINT) as a flag the serving loop polls, not a KeyboardInterrupt raised wherever the main thread
    happens to be: raised between a ``with lock:``'s acquire and its ``try``, it leaves the lock held and stopping
    the server then waits forever for it (a hang seen once under heavy load). Installed only in the main thread
    (elsewhere KeyboardInterrupt stays as it was); :meth:`restore` puts the previous handler back."""

    def __init__(self) -> None:
        import signal
        import threading

        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def run(args: argparse.Namespace) -> int:
    """Serve until the frames run out (or Ctrl-C); 0 on success, 1 when the source cannot be read."""
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from NerveSegLogic.stream.replay import ReplayServer

    log = logging.getLogger("nerveseg.replay")
    try:
        server = ReplayServer(args.source, fps=args.fps, host=args.host, port=args.port,
                              device_name=args.device_name, spacing_mm=args.spacing, loop=args.loop,
                              max_frames=args.frames, wait_for_client=args.wait_client,
                              color="rgb" if args.rgb else "grey", allowed_clients=args.allow)
    except (OSError, ValueError) as exc:
        print(f"nerveseg replay: {exc}", file=sys.stderr)
        return 1
    stop_requested = _CtrlCFlag()  # before start: a Ctrl-C from here on stops the server at the loop below
    try:
        server.start()
    except OSError as exc:
        stop_requested.restore()
        print(f"nerveseg replay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # not the main thread: no handler was installed
        server.stop()
        raise
    interrupted = False
    try:  # from here on, Ctrl-C stops the server cleanly
        print(f"replaying {server.source.description} at {server.fps:g} fps as {server.device_name!r} on "
              f"{server.host}:{server.port} (Ctrl-C to stop)", flush=True)
        last_sent, last_time = 0, time.perf_counter()
        while not stop_requested() and not server.wait_done(timeout=STATUS_PERIOD_S / 4):
            if time.perf_counter() - last_time < STATUS_PERIOD_S:
                continue
            now = time.perf_counter()
            sent = server.frames_sent
            rate = (sent - last_sent) / max(now - last_time, 1e-9)
            clients = server.clients
            print(f"{sent} frames sent ({rate:.1f} fps), {clients} client(s)" +
                  ("" if clients else f"; {server.frames_emitted - sent} frames played with no client connected"),
                  flush=True)
            last_sent, last_time = sent, now
    except KeyboardInterrupt:  # where no handler could be installed (not the main thread)
        interrupted = True
    finally:
        stop_requested.restore()
        server.stop()
    interrupted = interrupted or stop_requested()
    stats = server.sender.stats()
    print(f"{'stopped' if interrupted else 'finished'}: {server.frames_sent} frames sent in "
          f"{server.elapsed_s():.1f} s, {stats.clients_accepted} client(s) served, "
          f"{stats.messages_dropped} message(s) dropped for slow clients", flush=True)
    if server.error is not None:
        log.error("replay stopped early: %s", server.error)
        return 1
    return 0
