"""The segmentation worker process: what runs outside Slicer's process, so that receiving and inference never wait
for Python's GIL in the GUI (PythonQt keeps it while Slicer's main thread sits in the Qt event loop).

Started by :class:`~NerveSegLogic.live.worker.parent.WorkerProcess` as ``python -m NerveSegLogic.live.worker ...`` with
Slicer's own Python (``PythonSlicer``). It connects back to the parent over loopback, says hello with the token it
was given, loads the model, then runs the live path's own pieces here: an OpenIGTLink receiver thread (or frames
the parent sends), the inference thread (with the stream's steady overlay, ``--steady on|off``), and this main loop,
which sends each newest result (the frame, its labelmap, its stage times, the regions of each class and each class's
presence and display state) to the parent, plus a status message four times a second.
It imports neither ``slicer`` nor Qt. It exits when the parent says stop or the link closes (the parent died), so
it never outlives Slicer.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from typing import List, Optional

import numpy as np

from ...frame import Frame
from ...imaging.components import find_regions
from ...imaging.region import parse_region
from ...slot import NewestSlot
from ...stream.receiver import ImageReceiver
from ..engine import ReconnectWatch
from ..inputs import InputChoice
from ..pipeline import LivePipeline
from ..remote import RemoteRun
from . import link

log = logging.getLogger("nerveseg.worker")

STATUS_INTERVAL_S = 0.25


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m NerveSegLogic.live.worker", description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="HOST:PORT of the parent's link (loopback)")
    p.add_argument("--token", required=True, help="secret the parent gave; sent back in the hello")
    p.add_argument("--role", choices=("segment", "remote"), default="segment",
                   help="segment: run the model here; remote: pair frames with a 'nerveseg serve''s labelmaps")
    p.add_argument("--model", help="registered model name (role segment)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--compute", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: one less than the cores, as serve)")
    p.add_argument("--input", default="parent", help="'parent' (frames come over the link) or HOST:PORT of PLUS")
    p.add_argument("--device-name", default="", help="IGTL image device name to take ('' = any)")
    p.add_argument("--remote", default="", help="HOST:PORT of a 'nerveseg serve' (role remote)")
    p.add_argument("--min-region-area", type=int, default=50, help="regions smaller than this get no name label")
    p.add_argument("--steady", choices=("on", "off"), default="on",
                   help="the steady overlay (role segment): on (moving average, sticky labels, presence hysteresis) "
                        "or off (per-frame answers); both send each class's presence and state")
    p.add_argument("--region", default="", metavar="X,Y,W,H|auto",
                   help="the image region the model sees (role segment): X,Y,W,H frame pixels, auto, or '' for the "
                        "whole frame (a bad value is reported to the parent as the worker's start error)")
    return p.parse_args(argv)


def _host_port(text: str, what: str):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"{what}: expected HOST:PORT, got {text!r}")
    return host, int(port)


class ParentLink:
    """The worker's end of the link: blocking sends (under a lock), a reader thread for frames and stop."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self.stop = threading.Event()
        self.frames = None  # a NewestSlot when the parent sends frames
        self._next_frame_id = 1
        self._reader = threading.Thread(target=self._read, name="nerveseg-worker-link", daemon=True)

    def start(self) -> None:
        self._reader.start()

    def send(self, kind: str, header=None, arrays=()) -> None:
        with self._send_lock:
            link.send(self.sock, kind, header, arrays)

    def _read(self) -> None:
        reader = link.MessageReader()
        self.sock.settimeout(None)
        try:
            while not self.stop.is_set():
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                for message in reader.feed(data):
                    if message.kind == "stop":
                        self.stop.set()
                    elif message.kind == "frame" and self.frames is not None and message.arrays:
                        h = message.header
                        frame = Frame(image=message.arrays[0], geometry=link.geometry_from_json(h["geometry"]),
                                      frame_id=self._next_frame_id, device_name=h.get("device_name", ""),
                                      received_wall=time.time())
                        frame.stamp("received")
                        self._next_frame_id += 1
                        self.frames.put(frame)
        except (OSError, link.LinkError) as error:
            log.info("link to the parent ended: %s", error)
        finally:
            self.stop.set()  # the parent is gone or said stop: the worker ends
            if self.frames is not None:
                self.frames.close()


def result_message(result, counters: dict, min_region_area: int):
    """(header, arrays) of one result for the parent."""
    frame = result.frame
    received, offsets = link.frame_stage_offsets(frame)
    labels = [c.label for c in result.classes] or [int(v) for v in np.unique(result.labelmap) if v]
    regions = [list(r) for r in find_regions(result.labelmap, labels, min_area=min_region_area)]
    header = {"frame_id": int(frame.frame_id), "igtl_timestamp": float(frame.igtl_timestamp),
              "device_name": frame.device_name, "received_wall": float(frame.received_wall),
              "sent_wall": time.time(), "sent_perf_offset": time.perf_counter() - received if received else 0.0,
              "offsets": offsets, "geometry": link.geometry_to_json(frame.geometry),
              "model_name": result.model_name, "regions": regions, "counters": counters,
              # the image region the model saw ([x, y, w, h] frame pixels), None for the whole frame
              "image_region": _region_box(result),
              # how sure the model is of each class, and how it is drawn (the steady overlay runs here, so the
              # probabilities never cross the link): {key: 0..1}, {key: shown/uncertain/hidden}, or None
              "presence": _floats(getattr(result, "presence", None)), "states": getattr(result, "states", None)}
    return header, [frame.image, np.asarray(result.labelmap, dtype=np.uint8)]


def _floats(values):
    return None if values is None else {str(k): round(float(v), 4) for k, v in values.items()}


def _region_box(result):
    region = getattr(result, "region", None)
    return None if region is None else [region.x, region.y, region.w, region.h]


class _Counters:
    def __init__(self):
        self.results_sent = 0


def run(args: argparse.Namespace) -> int:
    host, port = _host_port(args.connect, "--connect")
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parent = ParentLink(sock)
    parent.send("hello", {"token": args.token, "pid": os.getpid(), "python": sys.version.split()[0]})

    try:
        source = _build(args, parent)
    except Exception as error:  # the parent shows this line in its status
        log.exception("the worker could not start")
        parent.send("error", {"message": f"{type(error).__name__}: {error}", "fatal": True})
        return 2
    pipeline, describe, classes, remote_run = source
    parent.send("ready", {"describe": describe, "classes": [[c.key, c.label] for c in classes]})
    parent.start()
    counters = _Counters()
    last_status = 0.0

    def status() -> dict:
        if remote_run is not None:
            c = remote_run.counters()
            receiver = remote_run.image_receiver
            return {"received": c["received"], "segmented": c["applied"], "dropped_before_inference": 0,
                    "errors": c["errors"], "results_dropped": c["dropped"], "results_sent": counters.results_sent,
                    "connected": bool(getattr(receiver, "is_connected", False)),
                    "remote_connected": bool(getattr(remote_run.label_receiver, "is_connected", False)),
                    "last_error": c.get("last_error"), "accounted": remote_run.all_accounted()}
        c = pipeline.counters()
        receiver = pipeline.receiver
        connected = bool(receiver.connected.is_set()) if receiver is not None else None
        engine = pipeline.engine.counters()
        return {"received": c["frames_received"], "segmented": c["frames_segmented"],
                "dropped_before_inference": c["frames_dropped_before_inference"],
                "errors": c["inference_errors"], "results_dropped": c["results_dropped_before_apply"],
                "results_sent": counters.results_sent, "connected": connected,
                "last_error": engine.get("last_error"), "accounted": pipeline.all_accounted()}

    def send_result(result) -> None:
        counters.results_sent += 1
        header, arrays = result_message(result, status(), args.min_region_area)
        parent.send("result", header, arrays)

    reconnects = None
    if remote_run is not None:
        remote_run.sinks = [send_result]
        remote_run.start()
    else:
        reconnects = ReconnectWatch(pipeline.receiver, pipeline.engine)
        pipeline.sinks = [send_result]
        pipeline.start()
    try:
        while not parent.stop.is_set():
            if remote_run is not None:
                if remote_run.poll() is None:
                    time.sleep(0.002)
            else:
                pipeline.poll(timeout=0.02)
            now = time.monotonic()
            if now - last_status >= STATUS_INTERVAL_S:
                last_status = now
                if reconnects is not None:
                    reconnects.check()  # a reconnection to PLUS is a new stream: the steady overlay starts again
                parent.send("status", status())
    except OSError as error:
        log.info("the parent link closed: %s", error)
    finally:
        if remote_run is not None:
            remote_run.stop()
        else:
            pipeline.stop()
        try:
            sock.close()
        except OSError:
            pass
    return 0


def _build(args, parent: ParentLink):
    """(pipeline, description, classes, remote run) for the role. The model registry and the backends, the worker's
    slow imports, are imported here, after the hello went out."""
    device = args.device_name or None
    if args.role == "remote":
        # The package's own imports inside functions here are lazy on purpose: the worker says hello to the panel
        # before it loads the model's modules.
        from ...models import registry

        card = registry.card(args.model or registry.default_name())
        image_host, image_port = _host_port(args.input, "--input")
        remote = _host_port(args.remote, "--remote")

        def receiver_factory(h, p, d, on_frame=None):
            return ImageReceiver(h, p, device_name=d, on_frame=on_frame)

        run = RemoteRun(receiver_factory, InputChoice("igtl", host=image_host, port=image_port, device_name=device),
                        remote, card.classes, card.name, sinks=[])
        return None, f"{card.name} on the server {args.remote}", card.classes, run

    from ...inference.backends import default_threads, resolve_device
    from ...inference.segmenter import load_segmenter

    region = parse_region(getattr(args, "region", ""))  # a bad value fails here, before the model is loaded
    # 0: as serve (one thread less than the cores, measured best on 2 cores), leaving a core to Slicer's GUI.
    threads = args.threads or default_threads()
    segmenter = load_segmenter(args.model, backend=args.backend, device=resolve_device(args.compute),
                               threads=threads)
    if region is not None:
        segmenter.region = region
    segmenter.warm_up()
    if args.input == "parent":
        frames = NewestSlot()
        parent.frames = frames
        pipeline = LivePipeline(None, segmenter, frames=frames)
    else:
        input_host, input_port = _host_port(args.input, "--input")
        pipeline = LivePipeline(ImageReceiver(input_host, input_port, device_name=device), segmenter)
    # The stream's steady overlay runs here, inside the segmenter on the inference thread: only the labelmap and
    # each class's presence and state go to the parent.
    pipeline.engine.set_steady(getattr(args, "steady", "on") != "off")
    return pipeline, segmenter.describe(), segmenter.classes, None


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    try:
        return run(args)
    except (ConnectionError, OSError) as error:
        log.error("worker link failed: %s", error)
        return 3
