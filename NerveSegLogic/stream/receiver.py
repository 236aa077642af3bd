"""ImageReceiver: an OpenIGTLink client that turns IMAGE messages into Frames in a newest-frame slot.

It connects to PLUS, to ``nerveseg replay`` or to any OpenIGTLink server, on a background thread:

- reconnects with exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``) while no server answers, and says
  so in the log once, then every ``log_every_s`` seconds;
- reads each message with its own socket reader (measured against pyigtl's: see benchmarks/speed/receiver.md), refuses a
  header that announces more than ``max_body_bytes`` BEFORE allocating anything, checks the CRC-64 of every IMAGE
  body, and skips every other message type (and IMAGEs from other devices when ``device_name`` is set) by reading
  their body into a small scratch buffer;
- turns each accepted IMAGE into a :class:`~NerveSegLogic.frame.Frame` (RGB made grey, geometry in RAS with the
  origin at the centre of pixel 0, the metadata of a header version 2 message in ``Frame.metadata``) and puts it in ``frames``, a :class:`~NerveSegLogic.slot.NewestSlot`: the
  consumer ``take()``s the newest, older untaken frames are dropped and counted there;
- counts everything in :class:`ReceiverStats`.

What happens to bad input: a CRC mismatch or a refused image (type, components, volume, size) drops that message and
keeps the connection; a header that is not OpenIGTLink, an oversize body, a message cut short by the server closing or
stalling for ``stall_timeout_s`` drop the connection, which is then reopened. So does silence: no message at all for
``idle_timeout_s`` (a server that accepts and then sends nothing, or a half-open TCP connection whose peer vanished)
is reported, counted in ``idle_timeouts`` and followed by a reconnection, never a "connected, 0 fps" that lasts
forever. TCP keepalive probes (after ``keepalive_idle_s``) also let the kernel notice a vanished peer.

Threads: ``start``/``stop`` are called from the owner's thread; everything else runs on the receiver thread. The
counters are written by the receiver thread under ``_cond``; ``stats()`` copies them under the same lock.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple

from NerveSegLogic.frame import Frame
from NerveSegLogic.igtl import DEFAULT_PORT
from NerveSegLogic.slot import NewestSlot
from NerveSegLogic.stream.codec import (DEFAULT_MAX_BODY_BYTES, HEADER_SIZE, IgtlProtocolError, ImageRefused,
                                        check_crc, decode_image, frame_image, parse_header)

logger = logging.getLogger(__name__)

_SCRATCH_BYTES = 64 * 1024
_RECV_CHUNK = 1024 * 1024


@dataclass
class ReceiverStats:
    """What the receiver has seen since it was created (counts survive stop/start)."""

    connect_attempts: int = 0
    connects: int = 0  # connections established
    reconnects: int = 0  # connections established after the first one
    disconnects: int = 0  # connections lost or dropped on purpose
    messages: int = 0  # complete messages read, any type
    bytes: int = 0  # bytes read, headers included
    frames: int = 0  # frames put in the slot
    frames_dropped: int = 0  # frames replaced in the slot before anyone took them
    crc_errors: int = 0  # IMAGE messages whose body CRC did not match (dropped, connection kept)
    truncated: int = 0  # messages cut short by the server closing or stalling (connection reopened)
    idle_timeouts: int = 0  # connections with no message for idle_timeout_s (reported and reopened)
    oversize: int = 0  # headers announcing more than max_body_bytes (refused before allocating; reopened)
    out_of_step: int = 0  # headers that were not OpenIGTLink (stream out of step; reopened)
    wrong_device: int = 0  # IMAGE messages from another device than the filter (skipped)
    ignored: Dict[str, int] = field(default_factory=dict)  # other message types skipped, by type
    refused: Dict[str, int] = field(default_factory=dict)  # IMAGEs not taken as frames, by reason
    last_refusal: str = ""  # the message of the latest refusal, for the user
    last_error: str = ""  # the latest connection-level problem
    gaps: int = 0  # times frames stopped with a lost connection and came back on a new one
    gap_seconds: float = 0.0  # total time from the last frame before a loss to the first frame after it


def backoff_delays(first_s: float, cap_s: float) -> Iterator[float]:
    """Waits between connection attempts (s): ``first_s``, doubling each time, never above ``cap_s``."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2.0, cap_s)


class ImageReceiver:
    """OpenIGTLink IMAGE client with reconnection, a newest-frame slot and counters.

    host, port: the server (PLUS's default port is 18944).
    device_name: take IMAGEs from this device only (PLUS: ``Image_Reference``); None takes any IMAGE.
    max_body_bytes: largest message body accepted; a header announcing more is refused before any allocation.
    check_crc: verify each IMAGE body's CRC-64 (on by default; pyigtl does not).
    reconnect_min_s, reconnect_max_s: backoff between connection attempts, doubling from min up to max (s).
    connect_timeout_s: how long one connection attempt may take (s).
    stall_timeout_s: a message whose remaining bytes do not arrive for this long is dropped as truncated (s).
    idle_timeout_s: a connection on which no message starts for this long is reported and reopened (s); None waits
        for ever. PLUS sends every frame (also of a frozen image), so 10 s of silence means something is wrong.
    keepalive_idle_s: TCP keepalive: first probe after this much silence, then every third of it, 3 probes (s).
    log_every_s: while no server answers, repeat the "still no server" message this often (s).
    frames: the slot to fill (a new NewestSlot when None); ``receiver.frames`` is it.
    on_frame: optional callable run on the receiver thread for every frame (keep it quick; errors are logged).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, device_name: Optional[str] = None, *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, check_crc: bool = True,
                 reconnect_min_s: float = 0.1, reconnect_max_s: float = 2.0, connect_timeout_s: float = 2.0,
                 stall_timeout_s: float = 5.0, idle_timeout_s: Optional[float] = 10.0,
                 keepalive_idle_s: float = 5.0, log_every_s: float = 10.0,
                 frames: Optional[NewestSlot] = None, on_frame: Optional[Callable[[Frame], None]] = None):
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError(f"need 0 < reconnect_min_s <= reconnect_max_s, got {reconnect_min_s}, {reconnect_max_s}")
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        for name, value in (("stall_timeout_s", stall_timeout_s), ("idle_timeout_s", idle_timeout_s),
                            ("keepalive_idle_s", keepalive_idle_s), ("connect_timeout_s", connect_timeout_s)):
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.host = host
        self.port = int(port)
        self.device_name = device_name
        self.max_body_bytes = int(max_body_bytes)
        self.check_crc = check_crc
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.keepalive_idle_s = keepalive_idle_s
        self.log_every_s = log_every_s
        self.frames: NewestSlot[Frame] = frames if frames is not None else NewestSlot()
        self.on_frame = on_frame
        #: Set while a connection to the server is open.
        self.connected = threading.Event()

        self._cond = threading.Condition()  # guards _stats and _next_frame_id; notified on every change
        self._stats = ReceiverStats()
        self._next_frame_id = 1
        self._last_frame_perf: Optional[float] = None
        self._lost_since_last_frame = False
        self._lifecycle = threading.Lock()  # serialises start/stop
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake_r: Optional[socket.socket] = None  # written by stop() to wake the thread's selector
        self._wake_w: Optional[socket.socket] = None
        self._warned_at: Dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()

    def start(self) -> None:
        """Start the receiver thread (no-op when running). Also works after stop()."""
        with self._lifecycle:
            if self.running:
                return
            self._stop.clear()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._thread = threading.Thread(target=self._run, name=f"ImageReceiver-{self.address}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and join the thread (no-op when stopped). Returns within about ``timeout`` s."""
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stop.set()
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            thread.join(timeout)
            if thread.is_alive():
                logger.error("receiver thread for %s did not stop within %.1f s", self.address, timeout)
            self._thread = None
            for s in (self._wake_r, self._wake_w):
                s.close()
            self._wake_r = self._wake_w = None
            self.connected.clear()
            with self._cond:
                self._cond.notify_all()

    def __enter__(self) -> "ImageReceiver":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- observing

    def stats(self) -> ReceiverStats:
        """A copy of the counters."""
        with self._cond:
            snapshot = dataclasses.replace(self._stats, ignored=dict(self._stats.ignored),
                                           refused=dict(self._stats.refused))
        snapshot.frames_dropped = self.frames.dropped_count
        return snapshot

    def wait_for(self, predicate: Callable[[ReceiverStats], bool], timeout: Optional[float] = None) -> bool:
        """Block until ``predicate(stats)`` is true (re-checked on every change); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = dataclasses.replace(self._stats, ignored=dict(self._stats.ignored),
                                               refused=dict(self._stats.refused))
                snapshot.frames_dropped = self.frames.dropped_count
                if predicate(snapshot):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def wait_for_frames(self, count: int, timeout: Optional[float] = None) -> bool:
        """Block until ``count`` frames in total have been received; False on timeout."""
        return self.wait_for(lambda s: s.frames >= count, timeout)

    # ---------------------------------------------------------------------------------------------- thread

    def _update(self, **changes) -> None:
        with self._cond:
            for name, delta in changes.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)
            self._cond.notify_all()

    def _count_in(self, table: str, key: str) -> None:
        with self._cond:
            counts = getattr(self._stats, table)
            counts[key] = counts.get(key, 0) + 1
            self._cond.notify_all()

    def _warn(self, kind: str, message: str, *args) -> None:
        """Log at WARNING the first time and then at most every 5 s per kind (a broken sender can send 30/s)."""
        now = time.monotonic()
        if now - self._warned_at.get(kind, -1e9) >= 5.0:
            self._warned_at[kind] = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    def _run(self) -> None:
        try:
            self._serve_connections()
        except Exception as exc:  # a bug here must be seen, not leave a silently dead receiver
            logger.exception("OpenIGTLink receiver for %s stopped on an unexpected error", self.address)
            with self._cond:
                self._stats.last_error = f"receiver stopped: {exc!r}"
                self._cond.notify_all()
        finally:
            self.connected.clear()

    def _serve_connections(self) -> None:
        delays = backoff_delays(self.reconnect_min_s, self.reconnect_max_s)
        failures = 0
        first_failure = 0.0
        last_reminder = 0.0
        while not self._stop.is_set():
            self._update(connect_attempts=1)
            sock, reason = self._connect()
            if sock is None:
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if failures == 0:
                    first_failure = last_reminder = now
                    logger.warning("No OpenIGTLink server at %s (%s); retrying every %.1f..%.1f s until one answers "
                                   "(is PLUS or 'nerveseg replay' running there?)",
                                   self.address, reason, self.reconnect_min_s, self.reconnect_max_s)
                elif now - last_reminder >= self.log_every_s:
                    last_reminder = now
                    logger.info("Still no OpenIGTLink server at %s after %d attempts in %.0f s (%s)",
                                self.address, failures + 1, now - first_failure, reason)
                failures += 1
                with self._cond:
                    self._stats.last_error = f"no server at {self.address}: {reason}"
                self._stop.wait(next(delays))
                continue

            failures = 0
            delays = backoff_delays(self.reconnect_min_s, self.reconnect_max_s)
            with self._cond:
                self._stats.connects += 1
                if self._stats.connects > 1:
                    self._stats.reconnects += 1
                self._cond.notify_all()
            self.connected.set()
            logger.info("Connected to OpenIGTLink server at %s", self.address)
            try:
                ended = self._read_messages(sock)
            finally:
                self.connected.clear()
                sock.close()
            if ended is None:  # stop requested
                break
            reason, counter = ended
            with self._cond:  # one update, so a waiter sees the count, the reason and the disconnect together
                if counter:
                    setattr(self._stats, counter, getattr(self._stats, counter) + 1)
                self._stats.disconnects += 1
                self._stats.last_error = reason
                if self._last_frame_perf is not None:
                    self._lost_since_last_frame = True
                self._cond.notify_all()
            logger.warning("OpenIGTLink connection to %s ended: %s; reconnecting", self.address, reason)
            self._stop.wait(next(delays))

    def _connect(self):
        """(socket, "") once connected; (None, reason) otherwise or when stop() was called."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return None, f"cannot resolve host {self.host!r}: {exc}"
        reason = "no address"
        for family, kind, proto, _name, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                with selectors.DefaultSelector() as selector:
                    selector.register(self._wake_r, selectors.EVENT_READ, "wake")
                    selector.register(sock, selectors.EVENT_WRITE, "socket")
                    ready = {key.data for key, _ in selector.select(self.connect_timeout_s)}
                if "wake" in ready:
                    sock.close()
                    return None, "stopped"
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ready else errno.ETIMEDOUT
            if err == 0:
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._keepalive(sock)
                return sock, ""
            sock.close()
            reason = errno.errorcode.get(err, str(err)) + (" (connection refused)" if err == errno.ECONNREFUSED
                                                           else " (timed out)" if err == errno.ETIMEDOUT else "")
        return None, reason

    def _keepalive(self, sock: socket.socket) -> None:
        """TCP keepalive with short timings where the platform lets us set them (Linux, macOS, Windows 10+)."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(round(self.keepalive_idle_s)))
        for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle),  # TCP_KEEPALIVE: macOS's name
                              ("TCP_KEEPINTVL", max(1, idle // 3)), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
                except OSError:  # not settable here: the system's defaults stay
                    pass

    def _fill(self, selector: selectors.BaseSelector, sock: socket.socket, view: memoryview,
              idle_ok: bool) -> Optional[int]:
        """Read exactly len(view) bytes from ``sock`` (registered in ``selector`` with the wake socket).

        Returns the count, or None when stop() was called.

        Raises _StreamEnded on EOF, a socket error, no progress for stall_timeout_s once bytes are awaited
        mid-message, or (``idle_ok``: waiting for the first byte of a header) nothing for idle_timeout_s.
        """
        got = 0
        total = len(view)
        while got < total:
            waiting_idle = idle_ok and got == 0
            ready = {key.data for key, _ in selector.select(self.idle_timeout_s if waiting_idle
                                                            else self.stall_timeout_s)}
            if "wake" in ready or self._stop.is_set():
                return None
            if not ready and waiting_idle:
                raise _StreamEnded("idle", f"no message for {self.idle_timeout_s:g} s (a silent server or a "
                                           "half-open connection)")
            if not ready:
                raise _StreamEnded("truncated", f"stalled: {got} of {total} bytes arrived, then nothing for "
                                                f"{self.stall_timeout_s:.1f} s")
            try:
                n = sock.recv_into(view[got:], min(total - got, _RECV_CHUNK))
            except OSError as exc:
                raise _StreamEnded("truncated" if got else "closed", f"socket error: {exc}") from None
            if n == 0:
                if got == 0 and waiting_idle:
                    raise _StreamEnded("closed", "server closed the connection")
                raise _StreamEnded("truncated", f"server closed the connection after {got} of {total} bytes")
            got += n
        return got

    def _read_messages(self, sock: socket.socket) -> Optional[Tuple[str, str]]:
        """Read messages until the connection ends or stop() is called (returns None).

        When the connection ends, returns (why, the counter to increment or "") for _run to record in one update.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ, "socket")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            return self._read_with(selector, sock)

    def _read_with(self, selector: selectors.BaseSelector, sock: socket.socket) -> Optional[Tuple[str, str]]:
        header_bytes = bytearray(HEADER_SIZE)
        header_view = memoryview(header_bytes)
        scratch = memoryview(bytearray(_SCRATCH_BYTES))
        in_body = False
        try:
            while True:
                in_body = False
                if self._fill(selector, sock, header_view, idle_ok=True) is None:
                    return None
                try:
                    header = parse_header(header_bytes, self.max_body_bytes)
                except IgtlProtocolError as exc:
                    self._update(bytes=HEADER_SIZE)
                    logger.error("%s from %s; dropping the connection (a body cannot be skipped safely)",
                                 exc, self.address)
                    return str(exc), "oversize" if exc.kind == "oversize" else "out_of_step"
                in_body = True
                wanted = header.message_type == "IMAGE" and (
                    self.device_name is None or header.device_name == self.device_name)
                if not wanted:
                    remaining = header.body_size
                    while remaining:
                        step = min(remaining, _SCRATCH_BYTES)
                        if self._fill(selector, sock, scratch[:step], idle_ok=False) is None:
                            return None
                        remaining -= step
                    with self._cond:
                        self._stats.messages += 1
                        self._stats.bytes += HEADER_SIZE + header.body_size
                        if header.message_type == "IMAGE":
                            self._stats.wrong_device += 1
                        else:
                            ignored = self._stats.ignored
                            ignored[header.message_type] = ignored.get(header.message_type, 0) + 1
                        self._cond.notify_all()
                    continue
                body = bytearray(header.body_size)
                if header.body_size and self._fill(selector, sock, memoryview(body), idle_ok=False) is None:
                    return None
                received_perf = time.perf_counter()
                received_wall = time.time()
                self._update(messages=1, bytes=HEADER_SIZE + header.body_size)
                self._take_image(header, body, received_perf, received_wall)
        except _StreamEnded as ended:
            if ended.kind == "idle":
                return str(ended), "idle_timeouts"
            return str(ended), "truncated" if ended.kind == "truncated" or in_body else ""

    def _take_image(self, header, body: bytearray, received_perf: float, received_wall: float) -> None:
        if self.check_crc:
            try:
                check_crc(header, body)
            except IgtlProtocolError as exc:
                self._update(crc_errors=1)
                self._warn("crc", "%s; message dropped", exc)
                return
        try:
            message = decode_image(header, body)
            pixels = frame_image(message)
        except (ImageRefused, IgtlProtocolError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "kind", "body")
            self._count_in("refused", reason)
            with self._cond:
                self._stats.last_refusal = str(exc)
            self._warn(f"refused-{reason}", "%s; frame refused", exc)
            return
        if pixels.ndim == 3:
            from ..imaging.placement import to_grey  # deferred: pulls in OpenCV

            pixels = to_grey(pixels)
        with self._cond:
            frame_id = self._next_frame_id
            self._next_frame_id += 1
        frame = Frame(image=pixels, geometry=message.geometry, frame_id=frame_id,
                      device_name=header.device_name, igtl_timestamp=header.timestamp, received_wall=received_wall,
                      timestamps={"received": received_perf}, metadata=message.metadata)
        self.frames.put(frame)
        with self._cond:
            self._stats.frames += 1
            if self._lost_since_last_frame and self._last_frame_perf is not None:
                self._stats.gaps += 1
                self._stats.gap_seconds += received_perf - self._last_frame_perf
                self._lost_since_last_frame = False
            self._last_frame_perf = received_perf
            self._cond.notify_all()
        if self.on_frame is not None:
            try:
                self.on_frame(frame)
            except Exception:  # a consumer's bug must not kill the stream
                logger.exception("on_frame callback failed for frame %d", frame_id)


class _StreamEnded(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
