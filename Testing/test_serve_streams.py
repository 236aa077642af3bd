"""One ``nerveseg serve`` for several scanners (issue 28, item 3): ``--input HOST:PORT=NAME --input ...``.

Real sockets throughout: each scanner is pyigtl's OpenIGTLinkServer (an implementation independent of ours, as a
PLUS server is), the serve connects to each as a client, and the test's clients read each stream's labelmaps from
its own port. The model is ``unet_random`` on ONNX Runtime (one thread): quick, and the same model the test runs
itself to check what each stream was sent."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.live.serve import LABEL_DEVICE_NAME, ServeOptions
from NerveSegLogic.live.serve_streams import (MultiStreamServer, SharedModel, StreamInput, label_device_name,
                                              parse_input, resolve_streams)
from NerveSegLogic.stream.receiver import ImageReceiver

WAIT = 30.0  # seconds: an upper bound for events on 2 shared cores, never a sleep
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ helpers
def sample_images(count: int, shape, offset: int = 0):
    """``count`` bundled usgra-seg frames (Resources/Sample), resized to ``shape`` (H, W)."""
    import cv2

    paths = sorted((REPO / "Resources" / "Sample" / "images").glob("*.png"))
    images = []
    for path in paths[offset:offset + count]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        images.append(cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA))
    assert len(images) == count
    return images


class Scanner:
    """A scanner's PLUS server: pyigtl's OpenIGTLinkServer, sending ``images`` in turn at ``fps`` once a client is
    connected (none: connected and silent). Frame n carries the IGTL timestamp ``base + n`` (whole seconds, exact
    through the wire), so a labelmap names the frame it was made from."""

    def __init__(self, images=(), fps: float = 30.0, base: int = 1_000_000, dtype=None):
        import pyigtl

        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.server = pyigtl.OpenIGTLinkServer(port=0, local_server=True)
        for s, handler in handlers.items():  # pyigtl installs its own; the test run keeps pytest's
            signal.signal(s, handler)
        self.port = self.server.server_address[1]
        self.images = [np.asarray(i, dtype=dtype) if dtype else i for i in images]
        self.fps, self.base = fps, base
        self.sent = {}  # IGTL timestamp -> index of the image sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import pyigtl

        n = 0
        while not self._stop.wait(1.0 / self.fps):
            images = self.images
            if not images or not self.server.is_connected():
                continue
            index = n % len(images)
            timestamp = float(self.base + n)
            message = pyigtl.ImageMessage(images[index][np.newaxis], device_name="Image_Reference",
                                          timestamp=timestamp)
            self.server.send_message(message, wait=False)
            self.sent[timestamp] = index
            n += 1

    def silence(self):
        """Send nothing more (the connection stays open): a stalled scanner."""
        self.images = []

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.server.stop()


class GarbageServer:
    """Accepts every connection and sends bytes that are not OpenIGTLink, then holds it open."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.held = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            conn.sendall(b"this is no OpenIGTLink header, just garbage from a broken device" * 2)
            self.held.append(conn)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.listener.close()


class Client:
    """A Slicer stand-in on one stream's port: records every labelmap it receives (any device name)."""

    def __init__(self, port: int):
        self.frames = []
        self._lock = threading.Lock()
        self.receiver = ImageReceiver("127.0.0.1", port, device_name=None, idle_timeout_s=None,
                                      on_frame=self._add)
        self.receiver.start()

    def _add(self, frame):
        with self._lock:
            self.frames.append(frame)

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= count:
                return True
            time.sleep(0.01)
        return False

    def stop(self):
        self.receiver.stop()


@pytest.fixture(scope="module")
def model(unet_random):
    from NerveSegLogic.inference.segmenter import load_segmenter

    return load_segmenter(unet_random, backend="onnx", threads=1)


def serve(streams, segmenter, steady=False, batch=False):
    """A running MultiStreamServer for ``streams`` (StreamInputs), driven on a thread, every stream on a free port."""
    options = ServeOptions(input_host="", input_port=0, port=0, threads=1, steady=steady, input_idle_timeout_s=None)
    server = MultiStreamServer(options, resolve_streams(streams, 0), segmenter=segmenter, batch=batch)
    server.start()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def close():
        server.stop()
        thread.join(5)
        server.close()

    return server, close


# ------------------------------------------------------------------------------------------------ the command
def test_inputs_parse_with_and_without_names_and_output_ports():
    assert parse_input("127.0.0.1:18944") == StreamInput("127.0.0.1", 18944)
    assert parse_input("plus-or1:18944=OR1") == StreamInput("plus-or1", 18944, "OR1")
    assert parse_input("[::1]:18944=OR-2@18999") == StreamInput("::1", 18944, "OR-2", 18999)
    assert label_device_name("OR1") == "OR1_Label"
    for bad, words in (("host", "HOST:PORT"), ("h:0=A", "HOST:PORT"), ("h:1=", "stream name ''"),
                       ("h:1=a b", "letters, digits"), ("h:1=FifteenCharsXYZ", "at most 14"),
                       ("h:1=A@x", "output port")):
        with pytest.raises(ValueError, match=words):
            parse_input(bad)
    streams = resolve_streams([parse_input("h:1=A"), parse_input("h:2=B"), parse_input("h:3=C@20000")], 18945)
    assert [(s.name, s.output_port) for s in streams] == [("A", 18945), ("B", 18946), ("C", 20000)]
    assert [s.output_port for s in resolve_streams([parse_input("h:1=A"), parse_input("h:2=B")], 0)] == [0, 0]


@pytest.mark.parametrize("argv, words", [
    (["--input", "h:1=OR1", "--input", "h:2=OR1"], "stream name 'OR1' is used twice"),
    (["--input", "h:1=OR1", "--input", "h:2"], "--input h:2 has no name"),
    (["--input", "h:1=OR1", "--input", "h:1=OR2"], "input h:1 is given twice"),
    (["--input", "h:1=OR1@19000", "--input", "h:2=OR2@19000"], "both be served on port 19000"),
    (["--input", "h:1=OR1", "--input", "h:2=OR2@18945"], "both be served on port 18945"),
])
def test_the_command_refuses_clashing_streams_by_name_before_loading_a_model(argv, words, monkeypatch, capsys):
    from NerveSegLogic.live import serve as live_serve
    from NerveSegLogic.live import serve_streams as live_serve_streams
    from NerveSegLogic.cli import main

    def no(*args, **kwargs):
        raise AssertionError("nothing may be loaded or opened for a refused command")

    monkeypatch.setattr(live_serve_streams, "run_serve_streams", no)
    monkeypatch.setattr(live_serve, "run_serve", no)
    assert main(["serve", *argv]) == 1
    assert words in capsys.readouterr().err


def test_one_unnamed_input_is_the_plain_serve_and_named_inputs_are_streams(monkeypatch):
    from NerveSegLogic.live import serve as live_serve
    from NerveSegLogic.live import serve_streams as live_serve_streams
    from NerveSegLogic.cli import main

    seen = {}
    monkeypatch.setattr(live_serve, "run_serve", lambda options: seen.setdefault("plain", options))
    monkeypatch.setattr(live_serve_streams, "run_serve_streams",
                        lambda options, streams, batch: seen.__setitem__("streams", (options, streams, batch)))
    assert main(["serve", "--input", "127.0.0.1:18944", "--port", "18950"]) == 0
    assert seen["plain"] == ServeOptions(input_host="127.0.0.1", input_port=18944, port=18950, threads=seen[
        "plain"].threads)
    assert seen["plain"].label_device_name == LABEL_DEVICE_NAME == "NerveSegLabel"
    assert main(["serve", "--input", "a:1=OR1", "--input", "b:2=OR2", "--port", "18950", "--stream-batch"]) == 0
    options, streams, batch = seen["streams"]
    assert [(s.host, s.port, s.name, s.output_port) for s in streams] == [("a", 1, "OR1", 18950),
                                                                         ("b", 2, "OR2", 18951)]
    assert batch is True
    assert main(["serve", "--input", "a:1=OR1"]) == 0  # one named input: a stream of its own name
    assert [(s.name, s.output_port) for s in seen["streams"][1]] == [("OR1", 18945)]


# ------------------------------------------------------------------------------------------------ the shared model
class SlowDouble:
    """A backend that takes ``delay_s`` per call and returns its input doubled; fails on a batch holding a NaN."""

    def __init__(self, delay_s=0.01):
        self.delay_s = delay_s
        self.calls = []
        self.task = "semantic"

    def run(self, batch):
        self.calls.append(len(batch))
        time.sleep(self.delay_s)
        if np.isnan(batch).any():
            raise ValueError("NaN in the input")
        return batch * 2.0


@pytest.mark.parametrize("batch", [False, True])
def test_the_shared_model_serves_waiting_streams_in_turn_and_each_gets_its_own_answer(batch):
    backend = SlowDouble()
    shared = SharedModel(backend, batch=batch)
    wrong, stop = [], threading.Event()

    def stream(value):
        view = shared.view(f"s{value}")
        assert view.task == "semantic"  # the real backend's attributes show through the view
        while not stop.is_set():
            out = view.run(np.full((1, 1, 4, 4), float(value), np.float32))
            if out.shape != (1, 1, 4, 4) or not np.all(out == 2.0 * value):
                wrong.append(value)

    threads = [threading.Thread(target=stream, args=(v,)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    time.sleep(0.6)
    stop.set()
    for t in threads:
        t.join(5)
    counters = shared.counters()
    counts, turns = counters["per_stream"], counters["max_turns"]
    assert wrong == []
    assert len(counts) == 3 and min(counts.values()) >= 5 and min(counts.values()) >= 0.5 * max(counts.values())
    if batch:  # a waiting request always goes in the very next call, with every other one waiting then
        assert turns == {"s1": 1, "s2": 1, "s3": 1}, turns
        assert max(backend.calls) == 3 and counters["calls"] < sum(counts.values())
    else:  # one at a time, in turn: while a stream waits, each other stream's call starts at most once
        assert max(turns.values()) <= 3 and max(turns.values()) >= 2, turns
        assert set(backend.calls) == {1}


def test_a_failing_frame_in_a_batch_fails_only_its_own_stream():
    backend = SlowDouble(delay_s=0.05)
    shared = SharedModel(backend, batch=True)
    results = {}

    def call(name, value):
        try:
            results[name] = shared.view(name).run(np.full((1, 1, 2, 2), value, np.float32))
        except ValueError as error:
            results[name] = error

    first = threading.Thread(target=call, args=("first", 1.0))  # holds the model while the others queue up
    first.start()
    time.sleep(0.02)
    others = [threading.Thread(target=call, args=(n, v)) for n, v in (("good", 2.0), ("bad", np.nan))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(5)
    assert backend.calls[:2] == [1, 2]  # the two that waited went as one batch, which failed ...
    assert np.all(results["good"] == 4.0) and isinstance(results["bad"], ValueError)  # ... and ran again alone


# ------------------------------------------------------------------------------------------------ real sockets
def test_two_scanners_each_get_their_own_labelmaps_on_their_own_port(model):
    from NerveSegLogic.inference.steady import SteadyOptions, SteadyOverlay

    images_a, images_b = sample_images(3, (160, 200)), sample_images(3, (120, 150), offset=10)
    a, b = Scanner(images_a, base=1_000_000), Scanner(images_b, base=2_000_000)
    server, close = serve([StreamInput("127.0.0.1", a.port, "OR1"), StreamInput("127.0.0.1", b.port, "OR2")], model)
    client_a, client_b = Client(server.port_of("OR1")), Client(server.port_of("OR2"))
    try:
        assert server.port_of("OR1") != server.port_of("OR2")
        assert client_a.wait_for(12) and client_b.wait_for(12), server.stream_status()
    finally:
        client_a.stop(), client_b.stop()
        close()
        a.stop(), b.stop()
    for client, scanner, images, device in ((client_a, a, images_a, "OR1_Label"), (client_b, b, images_b,
                                                                                   "OR2_Label")):
        assert {f.device_name for f in client.frames} == {device}  # only its own stream on its port
        for label in client.frames:
            index = scanner.sent[label.igtl_timestamp]  # a frame this very scanner sent
            assert label.image.shape == images[index].shape
            expected = model.segment(images[index], steady=SteadyOverlay.for_segmenter(model, SteadyOptions.off()))
            assert np.array_equal(label.image, expected.labelmap), (device, index)
    # the check has teeth: the model draws something, and not the same on both scanners' frames
    assert any(f.image.any() for f in client_a.frames) and any(f.image.any() for f in client_b.frames)
    status = server.stream_status()
    assert status["OR1"]["frames_segmented"] >= 12 and status["OR2"]["frames_segmented"] >= 12
    model_counters = server.shared.counters()
    assert model_counters["per_stream"].keys() == {"OR1", "OR2"}
    assert max(model_counters["max_turns"].values()) <= 2  # in turn: never twice the other while one waits


def test_a_stalled_scanner_does_not_slow_the_other(model):
    images = sample_images(2, (160, 200))
    healthy, stalled = Scanner(images, fps=30.0), Scanner(images, fps=30.0, base=5_000_000)
    server, close = serve([StreamInput("127.0.0.1", healthy.port, "OK"),
                           StreamInput("127.0.0.1", stalled.port, "STALL")], model)
    ok, stall = Client(server.port_of("OK")), Client(server.port_of("STALL"))
    try:
        assert ok.wait_for(5) and stall.wait_for(5), server.stream_status()
        stalled.silence()  # the connection stays open; nothing more comes
        time.sleep(0.3)
        stall_before, ok_before, sent_before = stall.count(), ok.count(), len(healthy.sent)
        time.sleep(2.0)
        served, sent = ok.count() - ok_before, len(healthy.sent) - sent_before
        status = server.stream_status()
    finally:
        ok.stop(), stall.stop()
        close()
        healthy.stop(), stalled.stop()
    assert stall.count() == stall_before  # nothing from the stalled scanner ...
    assert status["STALL"]["connected"]  # ... which is still connected (its silence is its own business)
    assert sent >= 40 and served >= 0.8 * sent, (served, sent, status)  # ... and the other is served at its rate


def test_bad_input_on_one_stream_is_reported_for_it_and_the_others_go_on(model, caplog):
    images = sample_images(2, (160, 200))
    healthy = Scanner(images)
    wrong_type = Scanner([i.astype(np.int32) for i in images])  # int32 pixels: not an image NerveSeg takes
    garbage = GarbageServer()
    caplog.set_level(logging.WARNING)
    server, close = serve([StreamInput("127.0.0.1", healthy.port, "OK"),
                           StreamInput("127.0.0.1", wrong_type.port, "INT32"),
                           StreamInput("127.0.0.1", garbage.port, "JUNK")], model)
    ok = Client(server.port_of("OK"))
    try:
        assert ok.wait_for(5), server.stream_status()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            status = server.stream_status()
            if status["INT32"]["refused"] and status["JUNK"]["out_of_step"] >= 2:
                break
            time.sleep(0.05)
        before = ok.count()
        assert ok.wait_for(before + 20), server.stream_status()  # the healthy stream goes on
        time.sleep(1.2)  # a report per stream at most once a second
        status = server.stream_status()
    finally:
        ok.stop()
        close()
        healthy.stop(), wrong_type.stop(), garbage.stop()
    assert status["INT32"]["refused"].get("scalar_type", 0) >= 1 and "int32" in status["INT32"]["last_problem"]
    assert status["INT32"]["frames_received"] == 0 and status["INT32"]["results_sent"] == 0
    assert status["JUNK"]["out_of_step"] >= 2 and status["JUNK"]["frames_received"] == 0
    assert status["OK"]["refused"] == {} and status["OK"]["out_of_step"] == 0 and status["OK"]["results_sent"] >= 25
    warnings = [r.getMessage() for r in caplog.records if r.name == "NerveSegLogic.live.serve_streams"]
    assert any(m.startswith("stream INT32 ") and "refused" in m for m in warnings), warnings
    assert any(m.startswith("stream JUNK ") for m in warnings), warnings
    assert not any(m.startswith("stream OK ") for m in warnings), warnings


class BrightFails:
    """A stand-in segmenter (no model card: no steady overlay) that fails on bright frames and marks dark ones."""

    def __init__(self):
        self.threads = set()

    def segment(self, image, frame=None, **kwargs):
        from NerveSegLogic.frame import Frame, SegmentationResult

        self.threads.add(threading.current_thread().name)
        if image.mean() > 200:
            raise ValueError("this model cannot take bright frames")
        frame = frame or Frame(image=image)
        return SegmentationResult(frame=frame, labelmap=(image > 50).astype(np.uint8), model_name="bright-fails",
                                  classes=())

    def warm_up(self):
        pass


def test_a_frame_the_model_fails_on_is_counted_for_its_stream_only():
    dark = [np.full((60, 80), 10, np.uint8), np.full((60, 80), 100, np.uint8)]
    bright = [np.full((60, 80), 250, np.uint8)]
    good, bad = Scanner(dark), Scanner(bright)
    segmenter = BrightFails()
    server, close = serve([StreamInput("127.0.0.1", good.port, "GOOD"), StreamInput("127.0.0.1", bad.port, "BAD")],
                          segmenter)
    client = Client(server.port_of("GOOD"))
    try:
        assert client.wait_for(10), server.stream_status()
        deadline = time.monotonic() + WAIT
        while server.stream_status()["BAD"]["inference_errors"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = server.stream_status()
    finally:
        client.stop()
        close()
        good.stop(), bad.stop()
    assert status["BAD"]["inference_errors"] >= 5 and "bright frames" in status["BAD"]["last_problem"]
    assert status["BAD"]["results_sent"] == 0
    assert status["GOOD"]["inference_errors"] == 0 and status["GOOD"]["results_sent"] >= 10
    for label in client.frames:  # the right answer for each of its frames
        assert np.array_equal(label.image, dark[good.sent[label.igtl_timestamp]] > 50)
    assert segmenter.threads == {"nerveseg-inference-GOOD", "nerveseg-inference-BAD"}  # each stream's own worker


def test_each_stream_keeps_its_own_steady_overlay(model):
    from NerveSegLogic.inference.steady import SteadyOverlay

    x, y = sample_images(1, (160, 200), offset=2)[0], sample_images(1, (160, 200), offset=15)[0]
    a, b = Scanner([x]), Scanner([y], base=3_000_000)
    server, close = serve([StreamInput("127.0.0.1", a.port, "A"), StreamInput("127.0.0.1", b.port, "B")], model,
                          steady=True)
    client_a, client_b = Client(server.port_of("A")), Client(server.port_of("B"))
    try:
        assert client_a.wait_for(15) and client_b.wait_for(15), server.stream_status()
        overlays = {name: s.pipeline.engine.steady for name, s in server.servers.items()}
    finally:
        client_a.stop(), client_b.stop()
        close()
        a.stop(), b.stop()
    assert overlays["A"] is not None and overlays["B"] is not None and overlays["A"] is not overlays["B"]
    assert server.servers["A"].segmenter is not server.servers["B"].segmenter
    # each overlay saw only its own scanner's (unchanging) view: it never had to start again ...
    assert overlays["A"].resets == 0 and overlays["B"].resets == 0
    # ... which one overlay fed both streams' frames in turn would have had to, at every frame
    shared = SteadyOverlay.for_segmenter(model)
    for image in (x, y, x, y):
        model.segment(image, steady=shared)
    assert shared.resets == 3
    # and each stream's labelmaps carry its own presence and states
    for client in (client_a, client_b):
        assert all(any(k.startswith("NerveSeg.state.") for k in f.metadata) for f in client.frames)


def test_a_taken_output_port_is_refused_naming_its_stream_and_nothing_is_left_listening():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    options = ServeOptions(input_host="", input_port=0, port=0, input_idle_timeout_s=None)
    streams = resolve_streams([StreamInput("127.0.0.1", 1, "FREE"), StreamInput("127.0.0.1", 2, "TAKEN", port)], 0)
    server = MultiStreamServer(options, streams, segmenter=BrightFails())
    try:
        with pytest.raises(OSError, match=f"stream TAKEN: cannot serve on port {port}"):
            server.start()
        assert not server.servers["FREE"].sender.running  # the stream that did start listening was closed again
    finally:
        taken.close()


def test_each_stream_has_its_own_region_detector_and_shares_the_models_backend(model):
    import copy

    from NerveSegLogic.live.serve_streams import stream_segmenter

    loaded = copy.copy(model)
    loaded.region = "auto"
    shared = SharedModel(loaded.backend)
    a, b = stream_segmenter(loaded, shared, "A"), stream_segmenter(loaded, shared, "B")
    assert a.auto_region is not None and b.auto_region is not None
    assert len({id(a.auto_region), id(b.auto_region), id(loaded.auto_region)}) == 3  # found per stream
    assert a.backend.stream == "A" and b.backend.stream == "B" and loaded.backend is model.backend
    assert a.card is loaded.card and a.describe().startswith(model.card.name)
    image = sample_images(1, (160, 200))[0]
    assert np.array_equal(a.segment(image).labelmap, model.segment(image).labelmap)  # same model, same answer
    assert shared.counters()["per_stream"] == {"A": 1}
