"""Slicer's side of the worker process: start it, watch it, restart it after a crash, stop it, and read its results
without ever blocking the GUI.

:class:`WorkerProcess` owns one child (``python -m NerveSegLogic.worker``, with Slicer's ``PythonSlicer`` inside
Slicer), a loopback listening socket it connects back to (checked by a per-start token) and its log file.
:class:`WorkerRun` is the run the :class:`~NerveSegLogic.live.controller.LiveController` polls from its timer tick:
each ``poll`` reads whatever the link holds, applies only the newest result (the frame and its labelmap, which
travel in one message and so always belong together), and keeps the process healthy: a worker that exits or goes
silent is restarted (at most :data:`MAX_RESTARTS` times in a row) with the reason in the status line.

No thread runs here: everything happens in the caller's ``poll``, so it works the same whether or not Python
threads get the GIL (they do not, in Slicer, while the Qt event loop waits).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..frame import Frame, SegmentationResult
from . import link

log = logging.getLogger(__name__)

#: How long a starting worker may take to say it is ready (importing torch and loading a model can be slow).
READY_TIMEOUT_S = 180.0
#: A ready worker sends a status four times a second; this much silence means it hangs.
SILENCE_TIMEOUT_S = 5.0
#: Restarts after crashes in a row before the run gives up (a success in between resets the count).
MAX_RESTARTS = 3
RESTART_BACKOFF_S = (1.0, 2.0, 4.0)
STOP_TIMEOUT_S = 3.0

_live_processes: "weakref.WeakSet[WorkerProcess]" = weakref.WeakSet()


def _kill_all_at_exit() -> None:
    for process in list(_live_processes):
        process.stop(timeout=1.0)


atexit.register(_kill_all_at_exit)


def worker_python() -> str:
    """The Python that runs the worker: ``NERVESEG_WORKER_PYTHON`` when set; inside Slicer its ``PythonSlicer``
    (Slicer's Python with Slicer's packages; ``sys.executable`` there may be the application); else this Python."""
    configured = os.environ.get("NERVESEG_WORKER_PYTHON")
    if configured:
        return configured
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        # PythonSlicer lives in Slicer's bin folder (<slicerHome>/bin; Slicer.app/Contents/bin on macOS).
        home = getattr(slicer.app, "slicerHome", "") or ""
        folders = [os.path.join(home, "bin")] if home else []
        folders.append(os.path.dirname(sys.executable))
        found = shutil.which(name) or next(
            (path for path in (shutil.which(name, path=folder) for folder in folders) if path), None)
        if found:
            return found
        raise RuntimeError(f"cannot find {name} next to Slicer ({os.path.dirname(sys.executable)}); set "
                           f"NERVESEG_WORKER_PYTHON to the Python that should run NerveSeg's worker")
    return sys.executable


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent.parent)


class WorkerProcess:
    """One worker process and its link. ``start`` returns at once; the child connects back during later polls.

    args: the worker's own arguments (after ``--connect`` and ``--token``, which are added here).
    """

    def __init__(self, args: Sequence[str], python: Optional[str] = None, log_dir: Optional[Path] = None):
        self.args = list(args)
        self.python = python
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
        self.process: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        self._log_file = None
        self._listener: Optional[socket.socket] = None
        self._sock: Optional[socket.socket] = None
        self._token = ""
        self._reader = link.MessageReader()
        self.writer: Optional[link.MessageWriter] = None
        self.hello: Optional[dict] = None
        self.started_at = 0.0
        self.last_message_at = 0.0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._token = secrets.token_hex(16)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        self._listener = listener
        port = listener.getsockname()[1]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handle, path = tempfile.mkstemp(prefix="nerveseg-worker-", suffix=".log", dir=str(self.log_dir))
        self.log_path = Path(path)
        self._log_file = os.fdopen(handle, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env["PYTHONUNBUFFERED"] = "1"
        command = [self.python or worker_python(), "-m", "NerveSegLogic.worker", "--connect", f"127.0.0.1:{port}",
                   "--token", self._token, *self.args]
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=env, creationflags=flags)
        self.started_at = self.last_message_at = time.monotonic()
        _live_processes.add(self)
        log.info("NerveSeg worker started (pid %s), log %s", self.process.pid, self.log_path)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """Ask the worker to stop, wait up to ``timeout`` s, then terminate and kill it; closes the link. Returns
        its exit code (None when it was never started). Idempotent."""
        process = self.process
        if self._sock is not None:
            try:
                self._sock.setblocking(True)
                self._sock.settimeout(0.5)
                link.send(self._sock, "stop")
            except OSError:
                pass
        code = None
        if process is not None:
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    code = process.wait(1.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait(5.0)
        self._close()
        _live_processes.discard(self)
        return code

    def _close(self) -> None:
        for sock in (self._sock, self._listener):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._sock = self._listener = None
        self.writer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once the process has ended, else None."""
        return None if self.process is None else self.process.poll()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # ------------------------------------------------------------------------------------------------ reading
    def read(self) -> List[link.Message]:
        """The messages the worker sent since the last call; never blocks. Raises LinkClosed / LinkError when the
        link broke (the caller treats that as a crash)."""
        if self._sock is None:
            self._accept()
            if self._sock is None:
                return []
        messages = self._reader.read(self._sock)
        if messages:
            self.last_message_at = time.monotonic()
        return messages

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            sock, address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        sock.settimeout(2.0)  # the hello is sent at once by a genuine worker
        try:
            first = link.MessageReader()
            messages: List[link.Message] = []
            deadline = time.monotonic() + 2.0
            while not messages and time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                messages = first.feed(data)
        except (OSError, link.LinkError):
            messages = []
        if not messages or messages[0].kind != "hello" or messages[0].header.get("token") != self._token:
            log.warning("refused a connection to NerveSeg's worker link from %s (no valid hello)", address)
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.writer = link.MessageWriter(sock)
        self.hello = messages[0].header
        self._reader = first  # keeps any bytes that came after the hello
        self._listener.close()
        self._listener = None
        self.last_message_at = time.monotonic()

    def send_frame(self, frame: Frame) -> None:
        """Offer a frame to the worker (volume-node input); replaces one that has not started to go out."""
        if self.writer is None:
            return
        self.writer.offer(link.encode("frame", {"geometry": link.geometry_to_json(frame.geometry),
                                                "device_name": frame.device_name}, [frame.image]))

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the worker's log."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


class _WorkerWatch:
    """Connection state of the worker's input for the status line: (connected, lost)."""

    def __init__(self):
        self.connected: Optional[bool] = None
        self.ever_connected = False

    def update(self, connected: Optional[bool]) -> None:
        self.connected = connected
        if connected:
            self.ever_connected = True

    def state(self):
        return self.connected, bool(self.ever_connected and self.connected is False)


class WorkerRun:
    """A live run whose frames are received and segmented by a worker process (see the module docstring).

    worker_args: the worker's arguments (role, model, input...); classes: the model's classes (results carry
    label values of these); sinks: called with each applied SegmentationResult (the LiveScene's apply);
    volume_input: a VolumeNodeInput whose frames are sent to the worker (None when the worker receives from PLUS);
    process_factory(args) -> WorkerProcess (injectable for tests).
    """

    def __init__(self, worker_args: Sequence[str], classes, sinks: Sequence[Callable[[SegmentationResult], None]],
                 volume_input=None, model_name: str = "",
                 process_factory: Optional[Callable[[Sequence[str]], WorkerProcess]] = None,
                 clock: Callable[[], float] = time.monotonic):
        from ..pipeline import LiveStats

        self.worker_args = list(worker_args)
        self.classes = tuple(classes)
        self.sinks = list(sinks)
        self.volume_input = volume_input
        self.model_name = model_name
        self._process_factory = process_factory or (lambda args: WorkerProcess(args))
        self._clock = clock
        self.stats = LiveStats()
        self.watch = _WorkerWatch()
        self.remote_watch = _WorkerWatch()
        self.process: Optional[WorkerProcess] = None
        self.ready = False
        self.describe = ""
        self.worker_status: Dict[str, object] = {}
        self.results_received = 0
        self.dropped_here = 0  # results replaced by newer ones within one tick
        self.apply_errors = 0
        self.crashes = 0
        self.restarts_in_a_row = 0
        self.failed = False  # gave up after MAX_RESTARTS
        self.message = ""
        self.last_error: Optional[str] = None
        self._restart_at: Optional[float] = None
        self._counters_before = {"received": 0, "applied": 0, "dropped": 0, "errors": 0}
        self.latest_regions: list = []
        self.last_log = ""  # the log tail of the last worker that ended

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._spawn()

    def _spawn(self) -> None:
        self.process = self._process_factory(self.worker_args)
        self.process.start()
        self.ready = False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()
        self._restart_at = None

    # ------------------------------------------------------------------------------------------------ polling
    def poll(self) -> Optional[SegmentationResult]:
        """Main thread: read the link, apply the newest result, watch the worker's health. Never blocks."""
        if self.failed:
            return None
        if self.process is None:
            if self._restart_at is not None and self._clock() >= self._restart_at:
                self._restart_at = None
                self._spawn()
            return None
        process = self.process
        try:
            messages = process.read()
        except (link.LinkClosed, link.LinkError, OSError) as error:
            self._crashed(f"the link broke ({error})")
            return None
        newest = None
        for message in messages:
            if message.kind == "result":
                if newest is not None:
                    self.dropped_here += 1
                newest = message
                self.results_received += 1
                self.worker_status = dict(message.header.get("counters") or {}, **{"at": self._clock()})
            elif message.kind == "status":
                self.worker_status = dict(message.header, at=self._clock())
            elif message.kind == "ready":
                self.ready = True
                self.restarts_in_a_row = 0
                self.describe = str(message.header.get("describe", ""))
                self.message = ""
            elif message.kind == "error":
                self.last_error = str(message.header.get("message", "worker error"))
        if self.worker_status:
            self.watch.update(self.worker_status.get("connected"))
            if "remote_connected" in self.worker_status:
                self.remote_watch.update(self.worker_status.get("remote_connected"))
            if self.worker_status.get("last_error"):
                self.last_error = str(self.worker_status["last_error"])
        if self.volume_input is not None and process.writer is not None and self.ready:
            frame = self.volume_input.poll()
            if frame is not None:
                try:
                    process.send_frame(frame)
                except link.LinkClosed as error:
                    self._crashed(str(error))
                    return None
        elif process.writer is not None:
            try:
                process.writer.flush()
            except link.LinkClosed as error:
                self._crashed(str(error))
                return None
        if not self._healthy(process):
            return None
        if newest is None:
            return None
        return self._apply(newest)

    def _healthy(self, process: WorkerProcess) -> bool:
        code = process.exit_code
        if code is not None:
            self._crashed(f"exit code {code}")
            return False
        silent = self._clock() - process.last_message_at
        limit = SILENCE_TIMEOUT_S if self.ready else READY_TIMEOUT_S
        if silent > limit:
            self._crashed(f"no message for {silent:.0f} s")
            return False
        return True

    def _crashed(self, why: str) -> None:
        process, self.process = self.process, None
        tail = ""
        code = None
        if process is not None:
            code = process.stop(timeout=1.0)
            tail = _last_line(process.log_tail(40))
            self.last_log = process.log_tail(40)
        self._remember_counters()
        reason = self.last_error if (self.last_error and not self.ready) else (tail or why)
        self.crashes += 1
        self.ready = False
        if process is not None and process.hello is None and code not in (None, 0) and not tail:
            reason = f"the worker did not start ({why})"
        if self.restarts_in_a_row >= MAX_RESTARTS:
            self.failed = True
            self.message = f"worker failed {self.crashes} times, stopped: {reason}"
            log.error("NerveSeg worker gave up: %s", reason)
            return
        delay = RESTART_BACKOFF_S[min(self.restarts_in_a_row, len(RESTART_BACKOFF_S) - 1)]
        self.restarts_in_a_row += 1
        self._restart_at = self._clock() + delay
        self.message = (f"worker crashed ({why}): {reason}; restarting in {delay:g} s "
                        f"({self.restarts_in_a_row} of {MAX_RESTARTS})")
        log.warning("NerveSeg %s", self.message)

    def _remember_counters(self) -> None:
        """Counters of a worker that ended carry over to the next one, so the run's totals keep counting."""
        c = self._worker_counts()
        for key in ("received", "dropped", "errors"):
            self._counters_before[key] += c[key]
        self.worker_status = {}

    def _apply(self, message: link.Message) -> Optional[SegmentationResult]:
        result = self._result(message)
        for sink in self.sinks:
            try:
                sink(result)
            except Exception as error:
                self.apply_errors += 1
                self.last_error = repr(error)
                log.exception("applying the worker's result of frame %s failed", result.frame_id)
                return None
        result.frame.stamp("applied")
        self.stats.record(result)
        return result

    def _result(self, message: link.Message) -> SegmentationResult:
        """The SegmentationResult of a result message, its stage stamps moved onto this process's clock."""
        h = message.header
        image, labelmap = message.arrays[0], message.arrays[1]
        now_perf, now_wall = time.perf_counter(), time.time()
        received_wall = float(h.get("received_wall") or 0.0)
        # The stamps are the worker's perf_counter times relative to its "received" stamp; the wall clock (shared
        # by both processes on one machine) places "received" on our perf_counter clock.
        received_here = now_perf - max(0.0, now_wall - received_wall) if received_wall else now_perf
        frame = Frame(image=image, geometry=link.geometry_from_json(h["geometry"]), frame_id=int(h["frame_id"]),
                      device_name=str(h.get("device_name", "")), igtl_timestamp=float(h.get("igtl_timestamp", 0.0)),
                      received_wall=received_wall)
        for stage, offset in (h.get("offsets") or {}).items():
            frame.stamp(stage, received_here + float(offset))
        self.latest_regions = [tuple(r) for r in h.get("regions") or []]
        return SegmentationResult(frame=frame, labelmap=labelmap, model_name=str(h.get("model_name", "")),
                                  classes=self.classes, regions=self.latest_regions)

    # ------------------------------------------------------------------------------------------------ counters
    def _worker_counts(self) -> Dict[str, int]:
        s = self.worker_status
        received = int(s.get("received", 0) or 0)
        dropped = int(s.get("dropped_before_inference", 0) or 0) + int(s.get("results_dropped", 0) or 0)
        errors = int(s.get("errors", 0) or 0)
        return {"received": received, "dropped": dropped, "errors": errors}

    def all_accounted(self) -> bool:
        """Every frame the worker received was segmented and applied here, dropped as stale, or failed."""
        s = self.worker_status
        if not s or not self.ready:
            return False
        return bool(s.get("accounted")) and int(s.get("results_sent", 0) or 0) == self.results_received

    def counters(self) -> dict:
        c = self._worker_counts()
        before = self._counters_before
        return {"received": before["received"] + c["received"], "applied": self.stats.applied,
                "dropped": before["dropped"] + c["dropped"] + self.dropped_here,
                "errors": before["errors"] + c["errors"] + self.apply_errors,
                "last_error": self.message or self.last_error}

    def log_tail(self, lines: int = 40) -> str:
        if self.process is not None:
            return self.process.log_tail(lines)
        return self.last_log
