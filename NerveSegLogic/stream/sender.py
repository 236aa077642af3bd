"""ImageSender: an OpenIGTLink server that sends IMAGE messages to every connected client.

``nerveseg serve`` sends each segmentation as a uint8 labelmap (device ``NerveSegLabel``, the frame's geometry and
IGTL timestamp, and each class's presence and display state as IGTL metadata: :func:`confidence_metadata`); the replay server sends ultrasound frames through the same class.

The caller is never blocked by a client: each client has its own backlog and writer thread. The backlog holds at
most ``backlog`` messages (1 by default: newest wins, what a live segmentation wants); when a client reads slower
than messages come, its oldest unsent messages are dropped (and counted). A client that accepts no bytes for
``client_send_timeout_s``, or that closes its end, is dropped without disturbing the others. One
listener thread accepts clients and reads (and discards) whatever they send, which also notices when they go.

Threads: the owner calls start/stop/send_*; the listener thread owns the listening socket and the client list
(both guarded by ``_cond``); each client's writer thread owns that client's socket writes.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.igtl import LABEL_DEVICE_NAME
from NerveSegLogic.stream import codec
from NerveSegLogic.stream.codec import encode_image

logger = logging.getLogger(__name__)


@dataclass
class SenderStats:
    """Counts since the sender was created (they survive stop/start)."""

    clients: int = 0  # connected now
    clients_accepted: int = 0
    clients_dropped: int = 0  # left or were dropped (closed, error, send timeout)
    messages_offered: int = 0  # send_* calls
    messages_queued: int = 0  # per client: messages put in a client's backlog
    messages_written: int = 0  # per client: messages fully written to a socket
    messages_dropped: int = 0  # per client: pushed out of a full backlog before being written (client too slow)
    bytes_written: int = 0
    clients_refused: int = 0  # connections closed at once: their address is not on the allow-list


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_allow_list(entries: Union[str, Sequence[str], None]) -> Optional[List[Network]]:
    """Client addresses allowed to connect: IP addresses or networks (``10.0.0.5``, ``192.168.1.0/24``), as a list
    or one comma-separated string. None or empty: everyone who can reach the port. Raises ValueError naming the bad
    entry."""
    if entries is None:
        return None
    if isinstance(entries, str):
        entries = [e for e in entries.split(",")]
    networks = []
    for entry in entries:
        text = str(entry).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"allowed client {text!r} is not an IP address or network (e.g. 10.0.0.5 or "
                             "192.168.1.0/24)") from None
    return networks or None


def is_allowed(address: str, networks: Optional[Sequence[Network]]) -> bool:
    """Whether a peer ``address`` (an IP string) is in ``networks`` (None allows every address)."""
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks if network.version == ip.version)


def encode_labelmap(labelmap: np.ndarray, geometry: Optional[ImageGeometry], device_name: str,
                    timestamp: float, metadata: Optional[Mapping[str, str]] = None) -> bytearray:
    """The IGTL IMAGE message of a 2D uint8 labelmap in one new buffer, byte for byte what ``codec.encode_image``
    makes (header version 1, RAS; with ``metadata``, header version 2 carrying it); the pixels are copied once.
    Raises ValueError for a labelmap larger than IGTL allows."""
    if metadata:
        return bytearray(b"".join(bytes(part) for part in encode_labelmap_parts(labelmap, geometry, device_name,
                                                                                timestamp, metadata)))
    return codec.encode_frame_message(labelmap, geometry, device_name, timestamp)


#: IGTL metadata keys of a ``nerveseg serve`` labelmap: ``NerveSeg.presence.<class key>`` = "0.930" (how sure the
#: model is that the class is in the frame, 0..1) and ``NerveSeg.state.<class key>`` = "shown" / "uncertain" /
#: "hidden" (how the live view draws it: filled, outline only, not at all; a hidden class has no pixels).
PRESENCE_KEY = "NerveSeg.presence."
STATE_KEY = "NerveSeg.state."


def confidence_metadata(presence: Optional[Mapping[str, float]], states: Optional[Mapping[str, str]]
                        ) -> Dict[str, str]:
    """The IGTL metadata of a labelmap's confidence (see :data:`PRESENCE_KEY`); empty when there is none."""
    out: Dict[str, str] = {}
    for key, value in (presence or {}).items():
        out[PRESENCE_KEY + key] = f"{float(value):.3f}"
    for key, value in (states or {}).items():
        out[STATE_KEY + key] = str(value)
    return out


def encode_labelmap_parts(labelmap: np.ndarray, geometry: Optional[ImageGeometry], device_name: str,
                          timestamp: float, metadata: Optional[Mapping[str, str]] = None) -> tuple:
    """The IMAGE message of a 2D labelmap as buffers to write one after the other, the pixels not copied (see
    ``codec.encode_frame_parts``). With ``metadata``: an OpenIGTLink header version 2 message (the 58-byte header,
    the 12-byte extended header and the 72-byte image header, then the pixels, then the metadata), byte for byte
    what ``codec.encode_image(..., header_version=2, metadata=...)`` makes; without, the version 1 message."""
    head, pixels = codec.encode_frame_parts(labelmap, geometry, device_name, timestamp)
    if not metadata:
        return head, pixels
    image_header = head[codec.HEADER_SIZE:]
    # extended header + metadata header + metadata body, around empty content: split after the extended header
    around = codec.pack_body(b"", header_version=2, metadata=metadata)
    extended, meta = around[:codec.EXTENDED_HEADER_SIZE], around[codec.EXTENDED_HEADER_SIZE:]
    first = extended + image_header
    size = len(first) + pixels.nbytes + len(meta)
    crc = codec.crc64(meta, codec.crc64(pixels, codec.crc64(first)))
    return _pack_header(device_name, timestamp, size, crc) + first, pixels, meta


def _pack_header(device_name: str, timestamp: float, body_size: int, crc: int) -> bytes:
    """The 58-byte OpenIGTLink header (version 2) of an IMAGE body of ``body_size`` bytes whose CRC-64 is ``crc``."""
    seconds, frac = codec.timestamp_to_igtl(timestamp)
    return codec._HEADER.pack(2, b"IMAGE", codec._ascii_field("device name", device_name, 20), seconds, frac,
                              body_size, crc)


#: What a backlog holds: one encoded message, or a message in parts written one after the other (headers, pixels).
Message = Union[bytes, bytearray, memoryview, Tuple[Union[bytes, memoryview], ...]]


def message_size(message: Message) -> int:
    return sum(len(part) for part in message) if isinstance(message, tuple) else len(message)


def write_message(sock: socket.socket, message: Message) -> None:
    """Write a whole message to a blocking socket (its timeout applies to each wait for room). The parts of a
    tuple go out with one ``sendmsg`` call where the system has it (no joining copy, one TCP push), else one
    ``sendall`` each."""
    if not isinstance(message, tuple):
        sock.sendall(message)
        return
    if not hasattr(sock, "sendmsg"):  # Windows
        for part in message:
            sock.sendall(part)
        return
    parts = [memoryview(part) for part in message if len(part)]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= parts[0].nbytes:
            sent -= parts[0].nbytes
            parts.pop(0)
        if sent:
            parts[0] = parts[0][sent:]


class _Backlog:
    """At most ``limit`` messages waiting for one client; putting into a full backlog drops the oldest."""

    def __init__(self, limit: int):
        self._limit = limit
        self._items: Deque[Message] = collections.deque()
        self._cond = threading.Condition()  # guards _items and _closed
        self._closed = False

    def put(self, message: Message) -> int:
        """Queue ``message``; returns how many older messages it pushed out (0 or 1)."""
        with self._cond:
            dropped = 0
            if len(self._items) >= self._limit:
                self._items.popleft()
                dropped = 1
            self._items.append(message)
            self._cond.notify()
            return dropped

    def take(self) -> Optional[Message]:
        """The oldest waiting message, blocking until there is one; None once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed)
            return None if self._closed else self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


class _Client:
    def __init__(self, sock: socket.socket, address: str, backlog: int):
        self.sock = sock
        self.address = address
        self.backlog = _Backlog(backlog)
        self.thread: Optional[threading.Thread] = None
        self.queued = 0  # guarded by the sender's _cond
        self.finished = 0  # written + dropped + abandoned; guarded by the sender's _cond
        self.alive = True
        self.failure = ""  # why the writer gave up, set by the writer thread


class ImageSender:
    """OpenIGTLink IMAGE server for any number of clients.

    port: TCP port, 0 for an ephemeral one (``.port`` tells which after start()).
    host: interface to listen on; ``0.0.0.0`` to serve other machines (the default serves this machine only).
    device_name: default device name of the messages sent.
    client_send_timeout_s: a client that accepts no bytes for this long is dropped (s).
    backlog: messages kept per client while it is busy; 1 = newest wins (no latency builds up), more rides out
        short hiccups of a client (the replay server keeps about half a second so a busy machine loses no frame).
    allowed_clients: IP addresses or networks allowed to connect (see :func:`parse_allow_list`); a connection from
        any other address is closed at once and counted in ``clients_refused``. None: no restriction (OpenIGTLink
        has no authentication, so serve other machines only on a trusted network or with this list).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", device_name: str = LABEL_DEVICE_NAME,
                 client_send_timeout_s: float = 5.0, backlog: int = 1,
                 allowed_clients: Union[str, Sequence[str], None] = None):
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1 message, got {backlog}")
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0..65535 (0: any free one), got {port}")
        self.allowed_clients = parse_allow_list(allowed_clients)
        self._refusals_logged_at = -1e9
        self.backlog = int(backlog)
        self.host = host
        self.requested_port = int(port)
        self.port: Optional[int] = None
        self.device_name = device_name
        self.client_send_timeout_s = client_send_timeout_s
        self._cond = threading.Condition()  # guards _clients, _stats, _running; notified on every change
        self._clients: List[_Client] = []
        self._stats = SenderStats()
        self._running = False
        self._lifecycle = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        with self._cond:
            return self._running

    def start(self) -> None:
        """Listen and accept clients (no-op when running; works again after stop()). Raises OSError if the
        port cannot be bound."""
        with self._lifecycle:
            if self._thread is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if os.name != "nt":  # rebind at once after a restart (on Windows the option would allow port theft)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((self.host, self.requested_port))
            except OSError as exc:
                listener.close()
                raise OSError(exc.errno,
                              f"cannot listen on {self.host}:{self.requested_port}: {exc.strerror}") from None
            listener.listen(16)
            listener.setblocking(False)
            self._listener = listener
            self.port = listener.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            with self._cond:
                self._running = True
            self._thread = threading.Thread(target=self._serve, name=f"ImageSender-{self.port}", daemon=True)
            self._thread.start()
            logger.info("OpenIGTLink sender listening on %s:%d", self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect every client, close the port and join all threads (no-op when stopped)."""
        with self._lifecycle:
            if self._thread is None:
                return
            with self._cond:
                self._running = False
                self._cond.notify_all()
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join(timeout)
            self._thread = None
            with self._cond:
                clients, self._clients = self._clients, []
            for client in clients:
                self._close_client(client, "sender stopped", timeout)
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()
            self._listener = self._wake_r = self._wake_w = None
            with self._cond:
                self._stats.clients = 0
                self._cond.notify_all()

    def __enter__(self) -> "ImageSender":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- sending

    def send_message(self, message: Message) -> int:
        """Queue an already encoded message (one buffer, or a tuple of parts written back to back) for every client;
        returns how many clients it was queued for.

        Never blocks on a client: a client whose backlog is full loses its oldest unsent message (counted).
        """
        with self._cond:
            self._stats.messages_offered += 1
            clients = [c for c in self._clients if c.alive]
            for client in clients:
                client.queued += 1
                self._stats.messages_queued += 1
        for client in clients:
            if client.backlog.put(message):
                with self._cond:
                    client.finished += 1
                    self._stats.messages_dropped += 1
                    self._cond.notify_all()
        return len(clients)

    def send_image(self, image: np.ndarray, geometry: Optional[ImageGeometry], igtl_timestamp: float,
                   device_name: Optional[str] = None) -> int:
        """Encode ``image`` ((H, W) or (H, W, C), see codec.encode_image) once and queue it for every client."""
        if not self.running:
            raise RuntimeError("ImageSender.send_image called before start() or after stop()")
        message = encode_image(image, geometry, device_name=device_name or self.device_name, timestamp=igtl_timestamp)
        return self.send_message(message)

    def send_labelmap(self, labelmap: np.ndarray, geometry: ImageGeometry, igtl_timestamp: float,
                      device_name: Optional[str] = None, copy: bool = True,
                      metadata: Optional[Mapping[str, str]] = None) -> int:
        """Send a segmentation: ``labelmap`` (H, W) uint8 (0 background, one value per class), with the geometry and
        the IGTL timestamp (s since the epoch) of the frame it was computed from. Returns the number of clients.

        ``copy=False``: the caller never writes to ``labelmap`` again (serve's labelmaps are new for every frame),
        so the message refers to its pixels instead of copying them (codec.encode_frame_parts; timed in
        benchmarks/speed/serve_overhead.md).

        ``metadata``: string key/value pairs sent with it (OpenIGTLink header version 2 metadata; ``nerveseg serve``
        sends each class's presence and display state, :func:`confidence_metadata`). None or empty: a version 1
        message, as before.

        Raises ValueError for a labelmap that is not a 2D uint8 array.
        """
        labelmap = np.asarray(labelmap)
        if labelmap.ndim != 2 or labelmap.dtype != np.uint8:
            raise ValueError(f"labelmap must be a 2D uint8 array (H, W), got {labelmap.dtype} "
                             f"of shape {labelmap.shape}")
        if not self.running:
            raise RuntimeError("ImageSender.send_labelmap called before start() or after stop()")
        device_name = device_name or self.device_name
        if copy:
            return self.send_message(encode_labelmap(labelmap, geometry, device_name, igtl_timestamp, metadata))
        return self.send_message(encode_labelmap_parts(labelmap, geometry, device_name, igtl_timestamp, metadata))

    # ---------------------------------------------------------------------------------------------- observing

    @property
    def client_count(self) -> int:
        with self._cond:
            return len(self._clients)

    def stats(self) -> SenderStats:
        with self._cond:
            return SenderStats(**{**self._stats.__dict__, "clients": len(self._clients)})

    def wait_for(self, predicate: Callable[[SenderStats], bool], timeout: Optional[float] = None) -> bool:
        """Block until ``predicate(stats)`` is true (re-checked on every change); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate(SenderStats(**{**self._stats.__dict__, "clients": len(self._clients)})), timeout)

    def wait_for_clients(self, count: int = 1, timeout: Optional[float] = None) -> bool:
        """Block until at least ``count`` clients are connected; False on timeout or when the sender stops."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._clients) >= count or not self._running, timeout)
            return len(self._clients) >= count

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Block until every queued message was written or dropped (or its client left); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: all(c.finished >= c.queued for c in self._clients), timeout)

    # ---------------------------------------------------------------------------------------------- threads

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    else:
                        self._drain(selector, key.data)
        except Exception:  # a bug here must be seen: clients would silently stop being accepted
            logger.exception("OpenIGTLink sender on port %d stopped accepting clients", self.port)
        finally:
            selector.close()

    def _accept(self, selector) -> None:
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: refuse this client, keep serving the others
            logger.error("OpenIGTLink sender on port %d cannot accept a client: %s", self.port, exc)
            time.sleep(0.1)  # the pending client keeps the listener readable: do not spin
            return
        if not is_allowed(peer[0], self.allowed_clients):
            sock.close()
            with self._cond:
                self._stats.clients_refused += 1
                self._cond.notify_all()
            now = time.monotonic()
            if now - self._refusals_logged_at >= 5.0:  # a scanner of ports must not flood the log
                self._refusals_logged_at = now
                logger.warning("OpenIGTLink sender on port %d refused a client from %s: not on the allow-list",
                               self.port, peer[0])
            return
        sock.setblocking(True)
        sock.settimeout(self.client_send_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock, f"{peer[0]}:{peer[1]}", self.backlog)
        client.thread = threading.Thread(target=self._write, args=(client,), name=f"ImageSender-{client.address}",
                                         daemon=True)
        with self._cond:
            self._clients.append(client)
            self._stats.clients_accepted += 1
            self._cond.notify_all()
        selector.register(sock, selectors.EVENT_READ, client)
        client.thread.start()
        logger.info("OpenIGTLink client %s connected (%d connected)", client.address, self.client_count)

    def _drain(self, selector, client: _Client) -> None:
        """Read and discard what a client sends (Slicer sends STATUS and queries); EOF means it left."""
        try:
            data = client.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError as exc:
            data, reason = b"", f"error {exc}"
        else:
            reason = "closed the connection"
        if not data:
            selector.unregister(client.sock)
            self._remove_client(client, reason)

    def _write(self, client: _Client) -> None:
        while True:
            message = client.backlog.take()
            if message is None:  # backlog closed: the client is being removed
                return
            try:
                write_message(client.sock, message)
            except OSError as exc:  # socket.timeout is an OSError
                with self._cond:
                    client.finished += 1
                    client.failure = f"send failed ({exc})"
                    self._cond.notify_all()
                try:
                    client.sock.shutdown(socket.SHUT_RDWR)  # the listener sees EOF and removes the client
                except OSError:
                    pass
                return
            with self._cond:
                client.finished += 1
                self._stats.messages_written += 1
                self._stats.bytes_written += message_size(message)
                self._cond.notify_all()

    def _remove_client(self, client: _Client, reason: str) -> None:
        """Listener thread only: it owns the selector, so it alone closes client sockets."""
        with self._cond:
            if client in self._clients:
                self._clients.remove(client)
            reason = client.failure or reason
        self._close_client(client, reason, timeout=self.client_send_timeout_s)

    def _close_client(self, client: _Client, reason: str, timeout: float) -> None:
        """Mark the client gone, wake its writer, close its socket, account for what it will never send."""
        with self._cond:
            if not client.alive:
                return
            client.alive = False
            client.finished = client.queued
            self._stats.clients_dropped += 1
            self._cond.notify_all()
        client.backlog.close()
        try:
            client.sock.shutdown(socket.SHUT_RDWR)  # unblocks a writer stuck in sendall
        except OSError:
            pass
        if client.thread is not None:
            client.thread.join(timeout)
        client.sock.close()
        logger.info("OpenIGTLink client %s left: %s", client.address, reason)
