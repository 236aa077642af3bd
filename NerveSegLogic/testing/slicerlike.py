"""What makes a headless run behave like 3D Slicer's main thread, which cannot run here (see issue 11): the tests
(Testing/slicerlike.py) and benchmarks/speed/bench_slicer_driver.py drive the live panel's logic with these.

- :func:`slicer_scene`: a scene carrying Slicer's Sequences logic (``vtkSlicerSequencesLogic``), which in Slicer is
  always loaded and copies a browser's selected item into its proxy nodes whenever a sequence changes.
- :class:`GilHoldingDriver`: between two timer ticks the main thread keeps Python's GIL, as Slicer's Qt event loop
  does (PythonQt does not release it while waiting): a C call through ``ctypes.PyDLL`` holds it for ``hold_s``.
"""

from __future__ import annotations

import ctypes
import os

_PYDLL = ctypes.PyDLL(None) if os.name != "nt" else None  # PyDLL calls keep the GIL (ctypes.CDLL would release it)


def slicer_scene():
    """A standalone MRML scene with the Sequences logic attached (as every scene in Slicer has)."""
    # The package's own imports inside functions here are lazy on purpose: they load numpy, which importing this
    # module must not.
    from ..scene import mrml

    scene = mrml.new_scene()
    assert mrml.sequences_logic_of(scene) is not None, "this MRML build has no vtkSlicerSequencesLogic"
    return scene


def hold_gil(seconds: float) -> None:
    """Keep the GIL for ``seconds`` in a C call, as Slicer's main thread does while its event loop waits."""
    _PYDLL.usleep(int(seconds * 1e6))


class GilHoldingDriver:
    """``between_ticks`` for ``run_sample_replay``: the main thread holds the GIL ``hold_s`` between ticks (5 ms, the
    panel's timer period), so Python threads of this process run only while ``tick`` runs."""

    def __init__(self, hold_s: float = 0.005):
        self.hold_s = hold_s
        self.ticks = 0

    def __call__(self) -> None:
        self.ticks += 1
        hold_gil(self.hold_s)
