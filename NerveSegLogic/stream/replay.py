"""ReplayServer: the stand-in for PLUS. Serves recorded frames as OpenIGTLink IMAGE messages at a steady rate.

Every connected client gets every frame, with PLUS's device name ``Image_Reference``, the pixel spacing and geometry
in the IGTL matrix, and the send time as the IGTL timestamp. Frames go out through
:class:`~NerveSegLogic.stream.sender.ImageSender` with half a second of backlog per client: a client slower than
that loses its oldest frames instead of slowing the others.

Pacing follows an absolute schedule: frame n goes out at ``start + n / fps``, so rounding in one wait never adds up
to drift. A server that falls more than a second behind (a stalled disk, a suspended laptop) restarts its schedule
from now rather than bursting the backlog.

Threads: the owner calls start/stop/wait_done; one pacing thread reads the source and sends; counters are guarded
by ``_cond``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Optional, Union

from NerveSegLogic.igtl import IMAGE_DEVICE_NAME
from NerveSegLogic.stream.codec import encode_frame_parts
from NerveSegLogic.stream.sender import ImageSender
from NerveSegLogic.stream.sources import FrameSource, open_source, sample_source

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0
_BEHIND_LIMIT_S = 1.0
_BACKLOG_S = 0.5


class ReplayServer:
    """Replays ``source`` over OpenIGTLink.

    source: a FrameSource, a path (image folder, video, ``.seq.nrrd``, a folder with sample.json), or None for the
        bundled sample (Resources/Sample).
    fps: frames per second; None takes the source's own rate, else 25.
    host, port: where to listen (port 0: an ephemeral port, read ``.port`` after start()).
    device_name: IGTL device name of the images (PLUS calls its B-mode stream ``Image_Reference``).
    spacing_mm: pixel size override (one number for i and j, or two/three numbers); None keeps the source's.
    loop: start again from the first frame at the end.
    max_frames: stop after this many frames (counting every frame scheduled); None: the whole source (or forever
        with loop).
    wait_for_client: start the clock only once the first client has connected, so a client sees every frame.
    color: ``grey`` or ``rgb`` (colour frames sent as 3 components, as PLUS sends Clarius' RGB).
    allowed_clients: IP addresses or networks that may connect (None: any); see ImageSender.
    """

    def __init__(self, source: Union[FrameSource, str, Path, None] = None, *, fps: Optional[float] = None,
                 host: str = "127.0.0.1", port: int = 0, device_name: str = IMAGE_DEVICE_NAME, spacing_mm=None,
                 loop: bool = False, max_frames: Optional[int] = None, wait_for_client: bool = False,
                 color: str = "grey", allowed_clients=None):
        if source is None:
            source = sample_source(spacing_mm=spacing_mm, color=color)
        elif isinstance(source, (str, Path)):
            source = open_source(source, spacing_mm=spacing_mm, color=color)
        elif spacing_mm is not None:
            raise ValueError("spacing_mm applies to a source given as a path; a FrameSource has its own spacing")
        self.source = source
        self.fps = float(fps if fps is not None else (source.fps or DEFAULT_FPS))
        if not 0 < self.fps <= 1000:
            raise ValueError(f"fps must be in (0, 1000], got {self.fps}")
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be >= 0, got {max_frames}")
        self.device_name = device_name
        self.loop = loop
        self.max_frames = max_frames
        self.wait_for_client = wait_for_client
        # Half a second of backlog per client: a busy machine delays a client's writer now and then, and a
        # recording should not lose frames to that (a client slower than the rate still loses the oldest).
        self.sender = ImageSender(port=port, host=host, device_name=device_name,
                                  backlog=max(2, int(math.ceil(self.fps * _BACKLOG_S))), allowed_clients=allowed_clients)
        #: Set when the last frame went out (not with loop and no max_frames) and was flushed to the clients, or when
        #: reading the source failed (see ``error``).
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()  # guards the counters below
        self._frames_emitted = 0  # frames scheduled, whether or not a client was there
        self._frames_sent = 0  # frames handed to at least one client
        self._started_at: Optional[float] = None
        self._ended_at: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lifecycle = threading.Lock()

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        return self.sender.host

    @property
    def port(self) -> Optional[int]:
        """The port listened on (known after start())."""
        return self.sender.port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen and start replaying (no-op when running; works again after stop(), from the first frame)."""
        with self._lifecycle:
            if self._thread is not None:
                return
            self.sender.start()
            self._stop.clear()
            self.done.clear()
            self.error = None
            with self._cond:  # a restart replays from the first frame and counts afresh
                self._started_at = self._ended_at = None
                self._frames_emitted = self._frames_sent = 0
            self._thread = threading.Thread(target=self._run, name=f"ReplayServer-{self.port}", daemon=True)
            self._thread.start()
            logger.info("Replaying %s at %g fps as %r on %s:%d", self.source.description, self.fps,
                        self.device_name, self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop replaying, disconnect the clients and close the port (no-op when stopped)."""
        with self._lifecycle:
            if self._thread is None:
                return
            self._stop.set()
            self.sender.stop(timeout)  # also wakes a wait for the first client
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "ReplayServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- observing

    @property
    def frames_sent(self) -> int:
        """Frames handed to at least one client (a client too slow to read may still have lost some: see
        ``sender.stats().messages_dropped``)."""
        with self._cond:
            return self._frames_sent

    @property
    def frames_emitted(self) -> int:
        """Frames whose time came, with or without a client to send them to."""
        with self._cond:
            return self._frames_emitted

    @property
    def clients(self) -> int:
        return self.sender.client_count

    def elapsed_s(self) -> float:
        """Seconds from the first frame to the last one (or to now while replaying); 0 before the first frame."""
        with self._cond:
            if self._started_at is None:
                return 0.0
            return (self._ended_at or time.perf_counter()) - self._started_at

    def wait_done(self, timeout: Optional[float] = None) -> bool:
        """Block until ``done``; False on timeout."""
        return self.done.wait(timeout)

    def wait_for_sent(self, count: int, timeout: Optional[float] = None) -> bool:
        """Block until ``count`` frames have been sent; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._frames_sent >= count, timeout)

    # ---------------------------------------------------------------------------------------------- thread

    def _run(self) -> None:
        try:
            if self.wait_for_client:
                logger.info("Waiting for the first client on %s:%d before starting the clock", self.host, self.port)
                if not self.sender.wait_for_clients(1):
                    return  # stopped while waiting
            finished = self._replay()
            with self._cond:
                self._ended_at = time.perf_counter()
            if finished:
                self.sender.flush(timeout=5.0)
                logger.info("Replay finished: %d frames sent", self.frames_sent)
                self.done.set()
        except Exception as exc:  # a bad file must not leave waiters hanging
            logger.error("Replay of %s failed: %s", self.source.description, exc)
            self.error = exc
            self.done.set()

    def _replay(self) -> bool:
        """Send frames on schedule; True when the frames ran out, False when stopped."""
        period = 1.0 / self.fps
        start: Optional[float] = None  # set once the first frame is read, so a slow first read is not "late"
        index = 0  # frames scheduled since `start`
        while True:
            sent_in_pass = 0
            for item in self.source:  # each frame is read before its due time, then waits for it
                if self.max_frames is not None and self.frames_emitted >= self.max_frames:
                    return True
                now = time.perf_counter()
                if start is None:
                    start = now
                    with self._cond:
                        self._started_at = start
                due = start + index * period
                if now - due > _BEHIND_LIMIT_S:
                    logger.warning("Replay fell %.1f s behind schedule; restarting the clock", now - due)
                    start, index, due = now, 0, now
                if due > now and self._stop.wait(due - now):
                    return False
                if self._stop.is_set():
                    return False
                # the headers and the frame's own pixels, written back to back (codec.encode_frame_parts): no
                # copy of the pixels between the timestamp and the send; the same bytes as encode_image
                message = encode_frame_parts(item.image, item.geometry, self.device_name, time.time())
                clients = self.sender.send_message(message)
                with self._cond:
                    self._frames_emitted += 1
                    if clients:
                        self._frames_sent += 1
                    self._cond.notify_all()
                index += 1
                sent_in_pass += 1
            if not self.loop or sent_in_pass == 0:
                if sent_in_pass == 0:
                    logger.warning("Replay source %s has no frames", self.source.description)
                return True
