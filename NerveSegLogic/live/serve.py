"""The run behind ``nerveseg serve``: receiver -> engine (with the stream's steady overlay) -> IGTL sender, driven from
the calling thread. Each labelmap carries every class's presence and display state as IGTL metadata."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from ..igtl import LABEL_DEVICE_NAME, SERVE_PORT
from ..stream.receiver import ImageReceiver
from ..stream.sender import ImageSender, confidence_metadata
from .engine import ReconnectWatch
from .pipeline import LivePipeline
from ..inference.segmenter import load_segmenter
from ..models import registry

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0


@dataclass
class ServeOptions:
    input_host: str
    input_port: int
    port: int = SERVE_PORT
    host: str = "127.0.0.1"  # this machine only unless told otherwise: OpenIGTLink has no authentication
    allowed_clients: Optional[str] = None  # comma-separated client addresses or networks; None: any
    input_idle_timeout_s: Optional[float] = 10.0  # silence on the input past this is reported and reconnected
    model: Optional[str] = None
    device_name: Optional[str] = None  # IGTL device-name filter; None = any IMAGE
    backend: str = "auto"  # ONNX Runtime on the CPU for semantic models, else torch
    compute: str = "auto"
    threads: Optional[int] = None  # intra-op threads of ONNX Runtime and torch; None: the backend's default
    max_results: int = 0  # 0 = until stopped
    #: the image region the model sees: None (whole frame), an inference.region.Region, "X,Y,W,H" or "auto"
    region: object = None
    #: the steady overlay (inference.steady): on (the default) or off (each frame's own answer); each labelmap
    #: carries every class's presence and display state in its IGTL metadata either way
    steady: bool = True
    #: send each labelmap's confidence as IGTL metadata (header version 2, which OpenIGTLink 3 and later read, Slicer's
    #: OpenIGTLinkIF included); False: version 1 messages, for clients built on an older OpenIGTLink, which cannot
    #: read version 2 (measured with the OpenIGTLink 1.11 ReceiveClient example: the stream goes out of step)
    metadata: bool = True
    #: the IGTL device name of the labelmaps sent (a named stream of a several-scanner serve: NAME_Label)
    label_device_name: str = LABEL_DEVICE_NAME


class SegmentationServer:
    """Owns the pipeline and the sender; ``serve_forever`` drives it, ``stop`` (any thread) ends it."""

    def __init__(self, options: ServeOptions, segmenter=None):
        self.options = options
        name = options.model or registry.default_name()
        self.segmenter = segmenter or load_segmenter(name, backend=options.backend, device=options.compute,
                                                     threads=options.threads)
        if options.region is not None:
            self.segmenter.region = options.region
        self.sender = ImageSender(port=options.port, host=options.host, allowed_clients=options.allowed_clients)
        self.receiver = ImageReceiver(options.input_host, options.input_port, device_name=options.device_name,
                                      idle_timeout_s=options.input_idle_timeout_s)
        # The labelmap is sent from the inference thread as soon as it exists: encoded while it is still in the
        # cache and without the hand-over to this thread (benchmarks/speed/serve_overhead.md). The sender is
        # thread-safe; this thread only counts and reports.
        self.pipeline = LivePipeline(self.receiver, self.segmenter, worker_sink=self._send)
        # One input stream: one steady overlay, run inside the segmenter on the inference thread.
        self.pipeline.engine.set_steady(bool(options.steady))
        self._reconnects = ReconnectWatch(self.receiver, self.pipeline.engine)
        self._stop = threading.Event()
        self.results_sent = 0

    @property
    def port(self) -> int:
        return self.sender.port

    def _send(self, result) -> None:
        """Runs on the inference thread (see __init__)."""
        frame = result.frame
        # copy=False: the segmenter makes a new labelmap for every frame and nothing writes to it afterwards
        # metadata: each class's presence and display state (IGTL header version 2), read back by the panel's
        # remote mode (live.runs.RemoteRun); none for a stand-in segmenter that gives no confidence
        self.sender.send_labelmap(result.labelmap, frame.geometry, igtl_timestamp=frame.igtl_timestamp,
                                  device_name=self.options.label_device_name, copy=False,
                                  metadata=confidence_metadata(result.presence, result.states)
                                  if self.options.metadata else None)
        self.results_sent += 1

    def start(self) -> None:
        self.sender.start()
        self.segmenter.warm_up()
        self.pipeline.start()

    def serve_forever(self) -> None:
        """Count results until stop() or max_results; the inference thread does the sending."""
        last_status = time.perf_counter()
        while not self._stop.is_set():
            self.pipeline.poll(timeout=0.05)
            if self.options.max_results and self.results_sent >= self.options.max_results:
                break
            if time.perf_counter() - last_status >= STATUS_INTERVAL_S:
                last_status = time.perf_counter()
                log.info("%s", self.status_line())
            self._reconnects.check()  # a reconnection to the input is a new stream for the steady overlay

    def status_line(self) -> str:
        c = self.pipeline.counters()
        receiver = c.get("receiver", {})
        connected = "connected" if receiver.get("connected") else "waiting for input"
        total = self.pipeline.stats.percentiles().get("total", {})
        return (f"{connected}; received {c['frames_received']}, sent {self.results_sent} to "
                f"{self.sender.client_count} client(s), dropped {c['frames_dropped']}, "
                f"{self.pipeline.stats.recent_fps():.1f} fps, latency p50 {total.get('p50', float('nan')):.1f} ms")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.pipeline.stop()
        self.sender.stop()


def _region_note(region) -> str:
    if region is None:
        return ""
    if str(region) == "auto":
        return "; image region: auto (found from the first second of frames, then logged; whole frames until then)"
    return f"; image region {region} (X,Y,W,H)"


def run_serve(options: ServeOptions) -> None:
    server = SegmentationServer(options)
    print(f"nerveseg serve: {server.segmenter.describe()}; input {options.input_host}:{options.input_port}"
          f" (device {options.device_name or 'any'}){_region_note(options.region)}; steady overlay "
          f"{'on' if options.steady else 'off'}; clients connect to port {options.port}. Ctrl-C stops.")
    server.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        server.close()
        print(server.status_line())
