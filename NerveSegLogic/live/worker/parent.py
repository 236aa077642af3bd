"""Slicer's side of the worker process: start it, watch it, restart it after a crash, stop it, and read its results
without ever blocking the GUI.

:class:`WorkerProcess` owns one child (``python -m NerveSegLogic.live.worker``, with Slicer's ``PythonSlicer`` inside
Slicer), a loopback listening socket it connects back to (checked by a per-start token) and its log file.
:class:`WorkerRun` is the run the :class:`~NerveSegLogic.live.controller.LiveController` polls from its timer tick:
each ``poll`` reads whatever the link holds, applies only the newest result (the frame and its labelmap, which
travel in one message and so always belong together), and keeps the process healthy: a worker that exits or goes
silent is restarted (at most :data:`MAX_RESTARTS` times in a row) with the reason in the status line.

Inside Slicer the child is ``PythonSlicer``, the CTK launcher: it starts the real interpreter as a child of its own
and forwards no signal, so terminating or killing the launcher alone would leave a hung worker running. The worker is
therefore started as the root of its own process tree (POSIX: a new session, so its own process group; Windows: a
new process group) and a worker that does not stop when asked is ended tree and all (POSIX: SIGTERM, then SIGKILL to
the group; Windows: ``taskkill /T /F``), by ``stop``, by the restart after a crash or a silence, and at exit. A
healthy worker still ends by itself when its link closes, which is what happens when Slicer's process dies.

No thread runs here: everything happens in the caller's ``poll``, so it works the same whether or not Python
threads get the GIL (they do not, in Slicer, while the Qt event loop waits).
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ...frame import Frame, SegmentationResult
from ...imaging.region import Region
from ..pipeline import LiveStats
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
        self._pending: List[link.Message] = []
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
        command = [self.python or worker_python(), "-m", "NerveSegLogic.live.worker", "--connect", f"127.0.0.1:{port}",
                   "--token", self._token, *self.args]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, env=env, **_tree_root_options())
        self.started_at = self.last_message_at = time.monotonic()
        _live_processes.add(self)
        log.info("NerveSeg worker started (pid %s), log %s", self.process.pid, self.log_path)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Optional[int]:
        """Ask the worker to stop, wait up to ``timeout`` s, then terminate and kill its whole process tree (the
        launcher and the interpreter it started); closes the link. Returns the started process's exit code (None
        when it was never started). Idempotent."""
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
            if os.name == "nt":
                code = _end_tree_windows(process, timeout)
            else:
                worker_pid = (self.hello or {}).get("pid")
                code = _end_tree_posix(process, timeout, worker_pid if isinstance(worker_pid, int) else None)
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
        """The exit code once the process has ended, else None (where it can, without reaping it: see
        :func:`_exit_status`)."""
        return None if self.process is None else _exit_status(self.process)

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
        messages = self._pending + self._reader.read(self._sock)
        self._pending = []
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
        self._pending = messages[1:]  # whole messages that came in the same read (a quick error): next read()
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


# ---------------------------------------------------------------------------------------------- ending the tree
def _tree_root_options() -> dict:
    """Popen options that make the worker the root of a process tree that can be ended as a whole."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}
    # A new session: its own process group, whose id is the started process's pid. It also keeps a Ctrl-C or a
    # hang-up of Slicer's terminal from reaching the worker directly; it still ends when its link closes.
    return {"start_new_session": True}


def _exit_status(process: subprocess.Popen) -> Optional[int]:
    """The exit code of ``process`` once it has ended, else None. On POSIX with ``os.waitid`` (Linux; macOS from
    Python 3.13) an ended process is left unreaped (a zombie) until ``stop`` reaps it: while it is, its pid, and so
    its process group's id, cannot be given to another process, so signalling the group cannot hit a stranger."""
    if process.returncode is not None:
        return process.returncode
    if os.name != "nt" and hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
        try:
            info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return process.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    return process.poll()


def _wait_for_exit(process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _exit_status(process) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _signal_group(process: subprocess.Popen, sig: int, worker_pid: Optional[int]) -> None:
    """POSIX: send ``sig`` to the worker's process group (started in a new session, its id is ``process.pid``).

    While ``process`` is not reaped (running or a zombie) the group id is ours. Once it was reaped (no
    ``os.waitid``, or reaped elsewhere) the id may belong to another process's group by now, so the group is
    signalled only while the worker that said hello (the interpreter behind the launcher) is still a member. A
    group that is already gone is fine."""
    pgid = process.pid
    if process.returncode is not None:
        if not worker_pid or worker_pid == pgid:
            return
        try:
            if os.getpgid(worker_pid) != pgid:
                return  # the worker is gone and its pid reused: not ours
        except OSError:
            return  # the worker is gone; so is, or soon will be, the group
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # nothing of the group is left
    except PermissionError:
        log.warning("not allowed to signal the NerveSeg worker's process group %s", pgid)


def _end_tree_posix(process: subprocess.Popen, timeout: float, worker_pid: Optional[int]) -> int:
    """Wait up to ``timeout`` s for the started process to end (the polite path: it was sent "stop"); then SIGTERM
    its group, 1 s more, then SIGKILL the group. The SIGKILL also goes, before the launcher is reaped, to a group
    whose launcher ended by itself or on SIGTERM: what is left there is a worker that outlived its launcher (a hung
    one behind ``PythonSlicer``, which forwards no signal, or one whose launcher crashed). A worker that ended
    politely leaves nothing in the group, and the SIGKILL reaches no one."""
    if not _wait_for_exit(process, timeout):
        log.warning("NerveSeg worker (pid %s) did not stop within %.1f s: terminating its process group",
                    process.pid, timeout)
        _signal_group(process, signal.SIGTERM, worker_pid)
        _wait_for_exit(process, 1.0)
    _signal_group(process, signal.SIGKILL, worker_pid)
    try:
        return process.wait(5.0)
    except subprocess.TimeoutExpired:  # only if signalling the group failed
        process.kill()
        return process.wait(5.0)


def _end_tree_windows(process: subprocess.Popen, timeout: float) -> int:
    """Windows: wait up to ``timeout`` s, then end the tree with ``taskkill /T /F``, which walks it from the started
    process (the launcher, ``PythonSlicer.exe``) while that runs; Windows has no polite signal for a console-less
    process. Not tested on Windows by the test suite."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    log.warning("NerveSeg worker (pid %s) did not stop within %.1f s: ending its process tree", process.pid, timeout)
    try:
        subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10.0,
                       creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("taskkill of the NerveSeg worker's tree failed: %s", error)
    if process.poll() is None:
        process.kill()
    return process.wait(5.0)


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
    """A live run whose frames are received and segmented by a worker process (see the module docstring); a
    :class:`~NerveSegLogic.live.runs.Run`.

    worker_args: the worker's arguments (role, model, input...); classes: the model's classes (results carry
    label values of these); sinks: called with each applied SegmentationResult (the LiveScene's apply);
    volume_input: a VolumeNodeInput whose frames are sent to the worker (None when the worker receives from PLUS);
    process_factory(args) -> WorkerProcess (injectable for tests).
    """

    def __init__(self, worker_args: Sequence[str], classes, sinks: Sequence[Callable[[SegmentationResult], None]],
                 volume_input=None, model_name: str = "",
                 process_factory: Optional[Callable[[Sequence[str]], WorkerProcess]] = None,
                 clock: Callable[[], float] = time.monotonic):
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
        presence, states = h.get("presence"), h.get("states")
        return SegmentationResult(
            frame=frame, labelmap=labelmap, model_name=str(h.get("model_name", "")), classes=self.classes,
            regions=self.latest_regions, region=Region(*h["image_region"]) if h.get("image_region") else None,
            presence={str(k): float(v) for k, v in presence.items()} if isinstance(presence, dict) else None,
            states={str(k): str(v) for k, v in states.items()} if isinstance(states, dict) else None)

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

    def stop_reason(self) -> Optional[str]:
        """Why the run must stop: the worker failed :data:`MAX_RESTARTS` times in a row (the message says how); else
        None. A volume input that left the scene does not stop it (the worker then gets no more frames), where the
        in-process run stops."""
        return self.message if self.failed else None

    def set_steady(self, steady) -> None:
        """Does nothing: the worker took ``--steady`` when it started (the controller restarts a segmenting worker to
        change it; a remote worker's server smooths by its own ``--steady``)."""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the running worker's log, else of the last worker that ended."""
        if self.process is not None:
            return self.process.log_tail(lines)
        return self.last_log
