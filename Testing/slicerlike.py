"""What makes a test behave like 3D Slicer, which cannot run here (see issue 11); the first two live in
NerveSegLogic/testing/slicerlike.py (a benchmark drives the panel with them too) and are imported here:

- :func:`slicer_scene`: a scene carrying Slicer's Sequences logic (``vtkSlicerSequencesLogic``), which in Slicer is
  always loaded and copies a browser's selected item into its proxy nodes whenever a sequence changes.
- :class:`GilHoldingDriver`: between two timer ticks the main thread keeps Python's GIL, as Slicer's Qt event loop
  does (PythonQt does not release it while waiting): a C call through ``ctypes.PyDLL`` holds it for ``hold_s``.
- :func:`run_bare`: Python code run in a fresh interpreter in which the packages a bare Slicer lacks (OpenCV,
  torch, ONNX Runtime, MONAI, safetensors) can neither be imported nor be found in the package metadata.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from NerveSegLogic.testing.slicerlike import GilHoldingDriver, hold_gil, slicer_scene  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

#: Import names and distribution names a bare Slicer 5.8 does not have (it has numpy, scipy, pillow, vtk).
BLOCKED_IMPORTS = ("cv2", "torch", "onnxruntime", "monai", "safetensors", "onnx")
BLOCKED_DISTRIBUTIONS = ("opencv-python-headless", "opencv-python", "torch", "onnxruntime", "monai",
                         "safetensors", "onnx")

_BLOCKER = """
import importlib.abc, importlib.metadata, sys
_IMPORTS = {imports!r}
_DISTS = {dists!r}
class _BareSlicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _IMPORTS:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a bare Slicer has none)", name=name)
        return None
sys.meta_path.insert(0, _BareSlicer())
_version = importlib.metadata.version
def _bare_version(name):
    if name.lower().replace("_", "-") in _DISTS:
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)
importlib.metadata.version = _bare_version
"""


def run_bare(code: str, timeout: float = 180.0, imports=BLOCKED_IMPORTS,
             distributions=BLOCKED_DISTRIBUTIONS) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter where ``imports`` cannot be imported and ``distributions`` look absent."""
    prelude = _BLOCKER.format(imports=tuple(imports), dists=tuple(distributions))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))
