"""The live runs behind one protocol, and the worker apart from the panel's logic.

- InProcessRun, RemoteRun and WorkerRun each have every member of :class:`~NerveSegLogic.live.runs.Run`, with the
  protocol's parameters, so the LiveController never asks which run it holds (no isinstance, hasattr or getattr on
  a run in controller.py).
- Where a member means nothing for a run it answers the neutral value: no segmentation server, no log, no reason
  to stop.
- The worker process's modules import nothing of the panel's logic (controller, runs, choices, status, selftest).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.classes import classes_from_mapping
from NerveSegLogic.frame import SegmentationResult
from NerveSegLogic.live.inputs import InputChoice
from NerveSegLogic.live.remote import RemoteRun
from NerveSegLogic.live.runs import InProcessRun, Run
from NerveSegLogic.live.worker.parent import MAX_RESTARTS, WorkerRun
from NerveSegLogic.slot import NewestSlot

LIVE = Path(__file__).resolve().parent.parent / "NerveSegLogic" / "live"
CLASSES = classes_from_mapping({1: "nerve", 2: "blood_vessel"})
MEMBERS = ("start", "stop", "poll", "all_accounted", "counters", "stop_reason", "set_steady", "log_tail")


class FakeReceiver:
    def __init__(self, *args, on_frame=None, **kwargs):
        self.frames = NewestSlot()
        self.is_connected = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FakeSegmenter:
    classes = CLASSES

    def segment(self, image, frame=None):
        return SegmentationResult(frame=frame, labelmap=np.zeros(image.shape[:2], np.uint8), model_name="fake",
                                  classes=self.classes)

    def warm_up(self, *args) -> None:
        pass


class FakeVolumeInput:
    name = "Image_Reference"

    def __init__(self):
        self.gone = False

    def removed(self) -> bool:
        return self.gone

    def poll(self):
        return None


def in_process_run(volume_input=None):
    return InProcessRun(None if volume_input else FakeReceiver(), volume_input, FakeSegmenter(), sinks=[])


def remote_run():
    return RemoteRun(FakeReceiver, InputChoice("igtl", host="127.0.0.1", port=18944), ("127.0.0.1", 18945), CLASSES,
                     "fake", sinks=[])


def worker_run():
    return WorkerRun(["--role", "segment"], CLASSES, sinks=[], process_factory=lambda args: None)


RUNS = {"in-process": in_process_run, "remote": remote_run, "worker": worker_run}


@pytest.mark.parametrize("make", RUNS.values(), ids=RUNS.keys())
def test_every_run_has_every_member_of_the_protocol_with_its_parameters(make):
    run = make()
    assert isinstance(run, Run)
    assert run.stats.applied == 0
    for name in ("watch", "remote_watch"):
        assert callable(getattr(run, name).state), name
    for name in MEMBERS:
        wanted = list(inspect.signature(getattr(Run, name)).parameters)[1:]
        assert list(inspect.signature(getattr(run, name)).parameters) == wanted, name


@pytest.mark.parametrize("make", RUNS.values(), ids=RUNS.keys())
def test_a_fresh_run_has_no_reason_to_stop_and_the_neutral_answers(make):
    run = make()
    assert run.stop_reason() is None
    assert run.log_tail(5) == ""
    assert set(run.counters()) == {"received", "applied", "dropped", "errors", "last_error"}
    connected, lost = run.remote_watch.state()
    assert lost is False and connected in (None, False)


def test_an_in_process_run_has_no_segmentation_server_and_stops_when_its_volume_goes():
    volume = FakeVolumeInput()
    run = in_process_run(volume)
    assert run.remote_watch.state() == (None, False)
    assert run.stop_reason() is None
    volume.gone = True
    assert run.stop_reason() == "input volume 'Image_Reference' was removed; stopped"


def test_a_worker_run_that_gave_up_says_why():
    run = worker_run()
    run.failed, run.message = True, f"worker failed {MAX_RESTARTS + 1} times, stopped: boom"
    assert run.stop_reason() == run.message


def test_set_steady_does_nothing_where_the_run_cannot_switch_it():
    for run in (remote_run(), worker_run()):
        assert run.set_steady(False) is None


def _calls_on_the_run(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "isinstance", "hasattr", "getattr") and node.args:
            subject = ast.unparse(node.args[0])
            if subject in ("run", "self._run") or subject.endswith("_run"):
                yield f"line {node.lineno}: {ast.unparse(node)}"


def test_the_controller_never_asks_which_run_it_holds():
    tree = ast.parse((LIVE / "controller.py").read_text(encoding="utf-8"))
    assert list(_calls_on_the_run(tree)) == []


def test_the_worker_imports_nothing_of_the_panels_logic():
    panel = {"controller", "runs", "choices", "status", "selftest"}
    for path in sorted((LIVE / "worker").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            parts = {part for name in names for part in name.split(".")}
            assert not parts & panel, f"{path.name} line {node.lineno} imports {sorted(parts & panel)}"
