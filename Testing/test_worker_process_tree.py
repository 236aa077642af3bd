"""Stopping the worker ends its whole process tree. Inside Slicer the worker is started with ``PythonSlicer``, the
CTK launcher, which starts the real interpreter as a child of its own and forwards no signal: ending the launcher
alone would leave a hung worker running. Here a launcher-like wrapper (written by each test, forwarding nothing)
runs the worker with real processes: a hung worker behind it is gone after ``stop``, after the watchdog's restart,
after a restart following a crash of the launcher, and at exit; a healthy one behind it still stops politely."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from NerveSegLogic.live.worker import parent
from NerveSegLogic.live.worker.parent import WorkerProcess, WorkerRun

pytestmark = pytest.mark.skipif(os.name == "nt" or not os.path.isdir("/proc"),
                                reason="real POSIX process trees, inspected through /proc")

LAUNCHER = '''\
#!{python}
"""Like PythonSlicer (the CTK launcher): runs the real interpreter as a child, forwards no signal, waits for it."""
import subprocess, sys
child = subprocess.Popen([{real!r}] + sys.argv[1:])
sys.exit(child.wait())
'''

HUNG_WORKER = '''\
#!{python}
"""A worker that hangs: it connects back and says hello (and ready), then ignores SIGTERM and never reads its link
again, so neither "stop" nor the link closing ends it."""
import argparse, os, signal, socket, time
from NerveSegLogic.live.worker import link
signal.signal(signal.SIGTERM, signal.SIG_IGN)
p = argparse.ArgumentParser()
p.add_argument("-m")
p.add_argument("--connect")
p.add_argument("--token")
args, _ = p.parse_known_args()
host, _, port = args.connect.rpartition(":")
sock = socket.create_connection((host, int(port)))
link.send(sock, "hello", {{"token": args.token, "pid": os.getpid()}})
if {ready!r}:
    time.sleep(0.5)  # the parent's accept reads the hello alone (a message in the same read would be dropped)
    link.send(sock, "ready", {{"describe": "hung"}})
while True:
    time.sleep(60)
'''


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _launcher(tmp_path: Path, real: str, name: str = "PythonSlicer") -> str:
    return _script(tmp_path / name, LAUNCHER.format(python=sys.executable, real=real))


def _hung_worker(tmp_path: Path, ready: bool = False) -> str:
    return _script(tmp_path / f"hung-python-{int(ready)}", HUNG_WORKER.format(python=sys.executable, ready=ready))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: an ended process not yet reaped by its (new) parent is a zombie, and counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _gone_soon(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def started_pids():
    """Pids of the worker interpreters a test started; any still running afterwards (the test failed) is killed, so a
    failing run leaves no process behind."""
    pids = []
    yield pids
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _connect(process: WorkerProcess, started_pids, within: float = 120.0) -> int:
    """Poll until the worker said hello; returns its interpreter's pid (the launcher's child)."""
    deadline = time.monotonic() + within
    while not process.connected and time.monotonic() < deadline:
        process.read()
        time.sleep(0.01)
    assert process.connected, process.log_tail()
    worker = int(process.hello["pid"])
    started_pids.append(worker)
    assert worker != process.process.pid  # a grandchild of this process, behind the launcher
    return worker


def test_stop_ends_a_hung_worker_behind_a_launcher_that_forwards_no_signal(tmp_path, started_pids):
    process = WorkerProcess(["--role", "segment"], python=_launcher(tmp_path, _hung_worker(tmp_path)),
                            log_dir=tmp_path)
    process.start()
    worker = _connect(process, started_pids)
    launcher = process.process.pid
    assert _alive(worker) and _alive(launcher)
    began = time.monotonic()
    process.stop(timeout=1.0)
    took = time.monotonic() - began
    assert took < 1.0 + 1.0 + 5.0, f"stop took {took:.1f} s"  # "stop", SIGTERM's second, the final wait
    assert not _alive(launcher)
    assert _gone_soon(worker), "the hung worker behind the launcher outlived stop()"
    assert process.stop() is not None  # idempotent (what a second stop signals: see the last test)


def test_a_healthy_worker_behind_a_launcher_still_stops_politely(tmp_path, started_pids, caplog):
    from NerveSegLogic.models import registry

    # The default model: its weights ship with the extension.
    process = WorkerProcess(["--role", "segment", "--model", registry.default_name(), "--input", "parent"],
                            python=_launcher(tmp_path, sys.executable), log_dir=tmp_path)
    process.start()
    worker = _connect(process, started_pids)
    deadline = time.monotonic() + 120
    ready = False
    while not ready and time.monotonic() < deadline:
        ready = any(m.kind == "ready" for m in process.read())
        time.sleep(0.01)
    assert ready, process.log_tail()
    caplog.set_level(logging.WARNING, logger=parent.__name__)
    began = time.monotonic()
    code = process.stop()
    took = time.monotonic() - began
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]
    # Exit code 0 is the worker's own (it returns 0 after "stop"; the launcher passes it on): a signal would give
    # a negative code. It stopped within the polite wait, before any escalation.
    assert code == 0, process.log_tail()
    assert took < parent.STOP_TIMEOUT_S, f"stop took {took:.1f} s"
    assert _gone_soon(worker)


def test_the_watchdog_and_the_restart_after_a_launcher_crash_end_the_whole_tree(tmp_path, started_pids,
                                                                               monkeypatch):
    monkeypatch.setattr(parent, "SILENCE_TIMEOUT_S", 0.5)
    python = _launcher(tmp_path, _hung_worker(tmp_path, ready=True))
    run = WorkerRun(["--role", "segment"], classes=(), sinks=[],
                    process_factory=lambda args: WorkerProcess(args, python=python, log_dir=tmp_path))

    def poll_until(condition, within=60.0):
        deadline = time.monotonic() + within
        while not condition() and time.monotonic() < deadline:
            run.poll()
            time.sleep(0.01)
        assert condition(), run.message

    run.start()
    try:
        # 1. Ready, then silent: the watchdog restarts it, ending the hung interpreter behind the launcher.
        poll_until(lambda: run.ready)
        first = _connect(run.process, started_pids)
        poll_until(lambda: run.crashes == 1)
        assert "no message for" in run.message
        assert _gone_soon(first), "the watchdog's restart left the hung worker running"

        # 2. The launcher crashes, its hung child lives on: the restart after the crash ends that child too.
        poll_until(lambda: run.process is not None and run.ready)
        second = _connect(run.process, started_pids)
        assert second != first
        os.kill(run.process.process.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert _alive(second)  # an orphan now: nothing but the run's restart can end it
        poll_until(lambda: run.crashes == 2)
        assert "exit code -9" in run.message
        assert _gone_soon(second), "the restart after the launcher's crash left its hung worker running"
    finally:
        run.stop()


def test_the_exit_hook_ends_a_hung_worker_behind_a_launcher(tmp_path, started_pids):
    process = WorkerProcess(["--role", "segment"], python=_launcher(tmp_path, _hung_worker(tmp_path)),
                            log_dir=tmp_path)
    process.start()
    worker = _connect(process, started_pids)
    parent._kill_all_at_exit()
    assert process.exit_code is not None
    assert _gone_soon(worker), "the exit hook left the hung worker running"


def test_a_reaped_launcher_s_group_is_signalled_only_while_its_worker_is_in_it(tmp_path, started_pids, monkeypatch):
    """Once the launcher is reaped its pid, and so its group's id, may be another process's: the group is then
    signalled only while the worker that said hello is still in it (a group with a member keeps its id). A group
    whose launcher ended but is not reaped yet is ours (the zombie keeps the id); a group that is gone is fine."""
    import subprocess

    process = WorkerProcess(["--role", "segment"], python=_launcher(tmp_path, _hung_worker(tmp_path)),
                            log_dir=tmp_path)
    process.start()
    worker = _connect(process, started_pids)
    process.stop(timeout=0.2)
    assert _gone_soon(worker)
    signalled = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: signalled.append((pgid, sig)))
    process.stop(timeout=0.2)  # idempotent
    # The killed worker may still be a zombie in the group (its new parent has not reaped it): then the group, and
    # its id, still exist and are ours. Otherwise nothing is signalled.
    for pgid, _ in signalled:
        assert pgid == process.process.pid and os.getpgid(worker) == pgid

    # The worker's pid reused by a process in another group (here: this test's own process): not signalled.
    signalled.clear()
    parent._signal_group(process.process, signal.SIGKILL, os.getpid())
    # No worker pid known (it never said hello) and the launcher reaped: not signalled.
    parent._signal_group(process.process, signal.SIGKILL, None)
    assert signalled == []

    # A group that is already gone: its ProcessLookupError is swallowed.
    def gone(pgid, sig):
        raise ProcessLookupError(pgid)

    monkeypatch.setattr(os, "killpg", gone)
    quick = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], start_new_session=True)
    assert parent._wait_for_exit(quick, 30.0)
    parent._signal_group(quick, signal.SIGKILL, None)
    monkeypatch.undo()
    # Ended but not reaped (where os.waitid exists): the zombie's group is signalled harmlessly, the code kept.
    assert quick.returncode is None or not hasattr(os, "waitid")
    parent._signal_group(quick, signal.SIGKILL, None)
    assert quick.wait(5.0) == 7
