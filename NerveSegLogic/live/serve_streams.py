"""One ``nerveseg serve`` for several scanners: ``--input HOST:PORT=NAME --input ...``.

One model, loaded once, serves several OpenIGTLink input streams. Each stream is what a single-input serve is (a
:class:`~.live_serve.SegmentationServer`): its own receiver (a client of its scanner's PLUS server) with its own
newest-frame slot (old frames dropped and counted, the newest kept), its own inference worker thread with its own
steady overlay and presence hysteresis (and its own image region, ``auto`` found per stream), and its own
:class:`~.stream.sender.ImageSender` on its own port with its own clients, sending labelmaps under its own device
name, ``NAME_Label`` (:func:`label_device_name`).

What the streams share is the model, through :class:`SharedModel`: each stream's segmenter is a shallow copy of the
loaded one whose backend is a :class:`StreamBackend`, a view of the one real backend. A stream's worker
preprocesses and postprocesses its frame on its own thread; only ``backend.run`` goes through the shared model, which
runs one request at a time in the order they came (first come, first served). Each worker has at most one request
waiting (it waits for its answer before it takes its next frame), so the order is round robin over the streams that
have a frame: a stream cannot be served twice while another one waits, a stream without frames (a stalled scanner)
waits on its own slot and takes no turn, and a stream's bad input (a refused image type, garbage, a disconnect:
handled by its receiver; a frame the model fails on: counted by its worker) stays in that stream.

Cross-stream batching (``batch=True``, ``--stream-batch``): when the model becomes free, every request waiting at that
moment (one per stream at most) runs as one batch; nothing waits for a batch to fill. It is off by default: on two
CPU cores it brought no consistent gain (benchmarks/speed/serve_streams.md).
"""

from __future__ import annotations

import collections
import copy
import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..inference.segmenter import load_segmenter
from ..models import registry
from .serve import _region_note, SegmentationServer

log = logging.getLogger(__name__)

#: A named stream's labelmaps go out as ``NAME`` + this (``OR1`` -> ``OR1_Label``).
LABEL_SUFFIX = "_Label"
#: OpenIGTLink device names are at most 20 bytes, so a stream name is at most this long.
MAX_NAME_LENGTH = 20 - len(LABEL_SUFFIX)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
STATUS_INTERVAL_S = 5.0


def label_device_name(name: str) -> str:
    """The IGTL device name of stream ``name``'s labelmaps."""
    return f"{name}{LABEL_SUFFIX}"


@dataclass(frozen=True)
class StreamInput:
    """One ``--input``: the scanner's IGTL server, the stream's name (None: the single unnamed stream of a plain
    serve) and its output port (None: ``--port`` plus the stream's position)."""

    host: str
    port: int
    name: Optional[str] = None
    output_port: Optional[int] = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def check_name(name: str) -> str:
    """``name`` when it can name a stream (letters, digits, ``_``, ``-``; at most :data:`MAX_NAME_LENGTH`, so that
    ``NAME_Label`` fits an IGTL device name), else ValueError saying why."""
    if not _NAME.match(name):
        raise ValueError(f"stream name {name!r}: use letters, digits, '_' and '-' (starting with a letter or digit)")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"stream name {name!r} is {len(name)} characters long; at most {MAX_NAME_LENGTH}, so that "
                         f"its labelmaps' device name {label_device_name(name)!r} fits OpenIGTLink's 20 bytes")
    return name


def parse_input(text: str) -> StreamInput:
    """``HOST:PORT``, ``HOST:PORT=NAME`` or ``HOST:PORT=NAME@OUTPUT_PORT`` -> StreamInput; ValueError otherwise."""
    address, sep, rest = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT[=NAME[@OUTPUT_PORT]] (e.g. 127.0.0.1:18944=OR1), got {text!r}")
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address in brackets: [::1]:18944
        host = host[1:-1]
    if not sep:
        return StreamInput(host, int(port))
    name, at, output = rest.partition("@")
    output_port = None
    if at:
        if not output.isdigit() or not 0 < int(output) < 65536:
            raise ValueError(f"{text!r}: the output port after '@' must be a TCP port 1..65535, got {output!r}")
        output_port = int(output)
    return StreamInput(host, int(port), check_name(name), output_port)


def resolve_streams(inputs: Sequence[StreamInput], base_port: int) -> List[StreamInput]:
    """The streams to serve, each with its output port: its own (``@PORT``), else ``base_port`` plus its position
    (``base_port`` 0: a free port each). ValueError, before anything is loaded or opened, for: a stream name used
    twice (named), a missing name when there are several inputs, one input given twice, two streams on one output
    port."""
    inputs = list(inputs)
    if not inputs:
        raise ValueError("serve needs at least one --input HOST:PORT")
    if len(inputs) > 1:
        for item in inputs:
            if item.name is None:
                raise ValueError(f"--input {item.address} has no name; with several inputs name each stream: "
                                 f"--input {item.address}=NAME (its labelmaps are sent as NAME{LABEL_SUFFIX})")
    names: Dict[str, StreamInput] = {}
    addresses: Dict[str, str] = {}
    for item in inputs:
        if item.name is not None:
            if item.name in names:
                raise ValueError(f"stream name {item.name!r} is used twice (--input {names[item.name].address}="
                                 f"{item.name} and --input {item.address}={item.name}); give each stream its own "
                                 "name")
            names[item.name] = item
        if item.address in addresses:
            raise ValueError(f"input {item.address} is given twice (streams {addresses[item.address]!r} and "
                             f"{item.name!r}); one stream per scanner")
        addresses[item.address] = item.name
    resolved, ports = [], {}
    for index, item in enumerate(inputs):
        port = item.output_port if item.output_port is not None else (base_port + index if base_port else 0)
        if port > 65535:
            raise ValueError(f"stream {item.name!r} would be served on port {port}, above 65535: give it one with "
                             f"--input {item.address}={item.name}@PORT")
        if port and port in ports:
            raise ValueError(f"streams {ports[port]!r} and {item.name!r} would both be served on port {port}; give "
                             "one another port with @PORT")
        if port:
            ports[port] = item.name
        resolved.append(replace(item, output_port=port))
    return resolved


# ------------------------------------------------------------------------------------------------ the shared model
class _Request:
    __slots__ = ("batch", "stream", "output", "error", "done", "started_before")

    def __init__(self, batch: np.ndarray, stream: str, started_before: int):
        self.batch, self.stream = batch, stream
        self.output = self.error = None
        self.done = False
        self.started_before = started_before  # model calls started before this request came


class SharedModel:
    """One backend for several streams' workers: ``run`` calls from any thread are served one at a time (or, with
    ``batch``, every request waiting when the model becomes free in one call), first come, first served.

    backend: the real backend (``run(batch)``). batch: run waiting requests together. max_batch: at most this many
    frames in one call (None: as many as wait).
    Counters (``counters()``): calls of the real backend, frames run, frames per stream, batch sizes, and per stream
    the most model calls that started between one of its requests coming and its own call starting, its own
    included (``max_turns``): at most the number of streams one at a time (round robin), 1 with batching.
    """

    def __init__(self, backend, batch: bool = False, max_batch: Optional[int] = None):
        self.backend = backend
        self.batch = bool(batch)
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._waiting: "collections.deque[_Request]" = collections.deque()
        self._busy = False
        self.calls = 0
        self.frames = 0
        self.batch_sizes: Dict[int, int] = {}
        self.per_stream: Dict[str, int] = {}
        self.started = 0  # calls started (under _cond)
        self.max_turns: Dict[str, int] = {}

    def view(self, stream: str) -> "StreamBackend":
        return StreamBackend(self, stream)

    def run(self, batch: np.ndarray, stream: str = ""):
        with self._cond:
            request = _Request(batch, stream, self.started)
            self._waiting.append(request)
            while not request.done and (self._busy or not self._waiting or self._waiting[0] is not request):
                self._cond.wait()
            if request.done:  # another stream's thread ran it in its batch
                return self._answer(request)
            self._busy = True
            group = self._take_group()
        try:
            self._run_group(group)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return self._answer(request)

    def _take_group(self) -> List[_Request]:
        """The request at the head, and with batching every waiting one of the same input shape (under _cond)."""
        head = self._waiting.popleft()
        group = [head]
        self.started += 1
        if self.batch:
            limit = self.max_batch or len(self._waiting) + 1
            kept = collections.deque()
            while self._waiting and len(group) < limit:
                other = self._waiting.popleft()
                (group if other.batch.shape[1:] == head.batch.shape[1:] else kept).append(other)
            kept.extend(self._waiting)
            self._waiting = kept
        for request in group:
            turns = self.started - request.started_before
            self.max_turns[request.stream] = max(self.max_turns.get(request.stream, 0), turns)
        return group

    def _run_group(self, group: List[_Request]) -> None:
        if len(group) == 1:
            self._run_one(group[0])
        else:
            try:
                output = self.backend.run(np.concatenate([r.batch for r in group]))
            except Exception:  # one bad request must not fail the others: each runs alone
                for request in group:
                    self._run_one(request)
            else:
                start = 0
                for request in group:
                    n = len(request.batch)
                    request.output = output[start:start + n]  # an array's rows, or an instance model's list items
                    start += n
                self._count(group, calls=1)
        with self._cond:
            for request in group:
                request.done = True

    def _run_one(self, request: _Request) -> None:
        try:
            request.output = self.backend.run(request.batch)
        except Exception as error:  # raised again on the stream's own thread
            request.error = error
        self._count([request], calls=1)

    def _count(self, group: List[_Request], calls: int) -> None:
        with self._cond:
            self.calls += calls
            size = sum(len(r.batch) for r in group)
            self.frames += size
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
            for request in group:
                self.per_stream[request.stream] = self.per_stream.get(request.stream, 0) + len(request.batch)

    @staticmethod
    def _answer(request: _Request):
        if request.error is not None:
            raise request.error
        return request.output

    def counters(self) -> dict:
        with self._cond:
            return {"calls": self.calls, "frames": self.frames, "batch_sizes": dict(sorted(self.batch_sizes.items())),
                    "per_stream": dict(self.per_stream), "max_turns": dict(self.max_turns), "batching": self.batch}


class StreamBackend:
    """One stream's view of a :class:`SharedModel`: ``run`` goes through it; anything else is the real backend's."""

    def __init__(self, shared: SharedModel, stream: str):
        self._shared = shared
        self.stream = stream

    def run(self, batch: np.ndarray):
        return self._shared.run(batch, self.stream)

    def __getattr__(self, name):  # task, path, session, device, tta ... of the real backend
        return getattr(self._shared.backend, name)


class _FairSegmenter:
    """A stand-in segmenter without a backend (tests), shared the same way: ``segment`` runs one at a time, first
    come, first served (no batching)."""

    def __init__(self, segmenter, gate: "SharedModel", stream: str):
        self._segmenter = segmenter
        self._gate = gate
        self._stream = stream

    def segment(self, image, frame=None, **kwargs):
        return self._gate.run(_Call(lambda: self._segmenter.segment(image, frame, **kwargs)), self._stream)[0]

    def warm_up(self, *args, **kwargs):
        warm = getattr(self._segmenter, "warm_up", None)
        if warm is not None:
            warm(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._segmenter, name)


class _Call:
    """A deferred ``segment`` call, run by SharedModel's runner as a batch of one (see _FairSegmenter)."""

    def __init__(self, call):
        self.call = call

    def __len__(self) -> int:
        return 1


class _CallBackend:
    @staticmethod
    def run(batch):
        return [batch.call()]


def stream_segmenter(segmenter, shared: SharedModel, stream: str):
    """Stream ``stream``'s segmenter: a shallow copy of ``segmenter`` (the model's card, settings and backend
    shared; its own image region, so ``auto`` is found per stream) whose backend is the shared model's view."""
    if hasattr(segmenter, "backend") and hasattr(segmenter, "card"):
        view = copy.copy(segmenter)
        view.backend = shared.view(stream)
        if hasattr(type(segmenter), "region"):
            view.region = segmenter.region  # a new choice state: an auto-detector of its own
        return view
    return _FairSegmenter(segmenter, shared, stream)


# ------------------------------------------------------------------------------------------------ the server
class MultiStreamServer:
    """Several streams, one model. ``options``: a ServeOptions whose input, port and label device name are those of
    the first stream (ignored); ``streams``: StreamInputs with their output ports resolved (:func:`resolve_streams`).
    ``segmenter``: the model (loaded from ``options`` when None). ``serve_forever`` drives it, ``stop`` ends it.
    ``servers[name]`` is each stream's SegmentationServer."""

    def __init__(self, options, streams: Sequence[StreamInput], segmenter=None, batch: bool = False,
                 max_batch: Optional[int] = None):
        self.options = options
        self.streams = list(streams)
        if segmenter is None:
            segmenter = load_segmenter(options.model or registry.default_name(), backend=options.backend,
                                       device=options.compute, threads=options.threads)
        if options.region is not None and hasattr(type(segmenter), "region"):
            segmenter.region = options.region
        self.segmenter = segmenter
        has_backend = hasattr(segmenter, "backend") and hasattr(segmenter, "card")
        self.shared = SharedModel(segmenter.backend if has_backend else _CallBackend(),
                                  batch=batch and has_backend, max_batch=max_batch)
        self.servers: Dict[str, SegmentationServer] = {}
        try:
            for item in self.streams:
                name = item.name or "stream"
                stream_options = replace(options, input_host=item.host, input_port=item.port,
                                         port=item.output_port or 0, max_results=0, region=None,
                                         label_device_name=label_device_name(name) if item.name else
                                         options.label_device_name)
                stream = SegmentationServer(stream_options, segmenter=stream_segmenter(segmenter, self.shared, name))
                stream.pipeline.engine.name = f"nerveseg-inference-{name}"  # one worker thread per stream
                self.servers[name] = stream
        except Exception:
            self.close()
            raise
        self._stop = threading.Event()
        self._reported: Dict[str, tuple] = {}

    @property
    def results_sent(self) -> int:
        return sum(server.results_sent for server in self.servers.values())

    def port_of(self, name: str) -> int:
        return self.servers[name].port

    def start(self) -> None:
        """Listen on every stream's port (OSError naming the stream and port when one is taken), warm the model up
        once, then start each stream's worker and receiver."""
        for name, server in self.servers.items():
            try:
                server.sender.start()
            except OSError as error:
                self.close()
                raise OSError(f"stream {name}: cannot serve on port {server.options.port} ({error}); give it "
                              "another with --input HOST:PORT=NAME@PORT") from error
        warm_up = getattr(self.segmenter, "warm_up", None)
        if warm_up is not None:
            warm_up()  # once, on the model itself
        for server in self.servers.values():
            server.pipeline.start()

    def serve_forever(self) -> None:
        """Apply each stream's results (counts, latencies), watch reconnections and bad input, report; the streams'
        inference threads do the sending. Until stop() or ``options.max_results`` results in all."""
        last_status = time.perf_counter()
        while not self._stop.wait(0.02):
            for server in self.servers.values():
                while server.pipeline.poll(timeout=0) is not None:
                    pass
                server._reconnects.check()  # a reconnection is a new stream for that stream's steady overlay
            self.report_problems()
            if self.options.max_results and self.results_sent >= self.options.max_results:
                break
            if time.perf_counter() - last_status >= STATUS_INTERVAL_S:
                last_status = time.perf_counter()
                for line in self.status_lines():
                    log.info("%s", line)

    def stream_status(self) -> Dict[str, dict]:
        """Per stream: address, output port, device name, connected, frames received / segmented / sent / dropped,
        what its input did wrong (refused images by reason, garbage, CRC errors, timeouts, disconnects), inference
        errors and the latest problem in words."""
        out = {}
        for name, server in self.servers.items():
            counters = server.pipeline.counters()
            receiver = server.receiver.stats()
            engine = server.pipeline.engine.counters()
            out[name] = {
                "input": server.receiver.address, "port": server.port, "device": server.options.label_device_name,
                "connected": server.receiver.connected.is_set(), "frames_received": counters["frames_received"],
                "frames_segmented": counters["frames_segmented"], "results_sent": server.results_sent,
                "frames_dropped": counters["frames_dropped"], "refused": dict(receiver.refused),
                "out_of_step": receiver.out_of_step, "crc_errors": receiver.crc_errors,
                "truncated": receiver.truncated, "oversize": receiver.oversize,
                "idle_timeouts": receiver.idle_timeouts, "disconnects": receiver.disconnects,
                "inference_errors": engine["errors"], "sink_errors": counters["sink_errors"],
                "last_problem": engine["last_error"] or receiver.last_refusal or receiver.last_error or "",
            }
        return out

    def report_problems(self) -> None:
        """Log a warning naming the stream whenever its bad-input or error counts grow (at most once a second per
        stream)."""
        now = time.monotonic()
        for name, server in self.servers.items():
            receiver = server.receiver.stats()
            engine = server.pipeline.engine.counters()
            counts = (sum(receiver.refused.values()), receiver.out_of_step, receiver.crc_errors, receiver.oversize,
                      receiver.truncated, receiver.idle_timeouts, receiver.disconnects, engine["errors"])
            previous = self._reported.get(name)
            if previous is None:
                self._reported[name] = (counts, now)
                continue
            if counts != previous[0] and now - previous[1] >= 1.0:
                self._reported[name] = (counts, now)
                problem = engine["last_error"] or receiver.last_refusal or receiver.last_error
                log.warning("stream %s (%s): %d image(s) refused, %d garbage, %d CRC, %d oversize, %d cut short, "
                            "%d silent, %d disconnect(s), %d inference error(s); latest: %s; the other streams go "
                            "on", name, server.receiver.address, *counts, problem)

    def status_lines(self) -> List[str]:
        return [f"stream {name} ({server.receiver.address} -> port {server.port}, {server.options.label_device_name})"
                f": {server.status_line()}" for name, server in self.servers.items()]

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for server in self.servers.values():
            server.pipeline.stop()
        for server in self.servers.values():
            server.sender.stop()


def run_serve_streams(options, streams: Sequence[StreamInput], batch: bool = False) -> None:
    """``nerveseg serve`` with named inputs: print what serves where, serve until Ctrl-C."""
    server = MultiStreamServer(options, streams, batch=batch)
    server.start()
    print(f"nerveseg serve: {server.segmenter.describe()} for {len(streams)} stream(s), one at a time, first come "
          f"first served{' (waiting frames batched)' if batch else ''}{_region_note(options.region)}; steady overlay "
          f"{'on' if options.steady else 'off'} per stream; device {options.device_name or 'any'}. Ctrl-C stops.")
    for name, stream in server.servers.items():
        print(f"  stream {name}: input {stream.receiver.address} -> clients connect to port {stream.port}, "
              f"labelmaps as {stream.options.label_device_name}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping")
    finally:
        server.close()
        for line in server.status_lines():
            print(line)
        model = server.shared.counters()
        print(f"model: {model['calls']} call(s) for {model['frames']} frame(s); frames per call "
              f"{model['batch_sizes']}; frames per stream {model['per_stream']}; most calls a stream's frame waited "
              f"for, its own included {model['max_turns']}")
