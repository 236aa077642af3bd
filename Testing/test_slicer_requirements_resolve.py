"""The packages NerveSeg installs into Slicer resolve on Slicer's own Python without damaging it.

Slicer 5.6/5.8 run Python 3.9 with numpy 1.26. Here pip resolves Resources/requirements-slicer.txt from the package
index for that Python on Linux, Windows and macOS (``pip install --dry-run --python-version 3.9 --only-binary
:all:``: the metadata of the versions pip would really pick, no guessing) with numpy held at 1.26.4 as
slicer_setup holds it, and the test looks at what would be installed: numpy unchanged, no torch (it must come from
the PyTorch extension), no slicer-core or vtk. It also shows why numpy must be held: without the hold the newest
OpenCV would pull numpy 2. Needs the package index (as `make test` does to install the venv).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "Resources" / "requirements-slicer.txt"
SLICER_NUMPY = "1.26.4"
PLATFORMS = {
    "linux": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"],
    "windows": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64"],
}


def resolve(tmp_path: Path, platforms, extra=()) -> dict:
    """{canonical name: version} pip would install for Slicer's Python 3.9 on ``platforms``."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "--python-version", "3.9",
               "--implementation", "cp", "--only-binary=:all:", "-r", str(REQUIREMENTS), *extra]
    for platform in platforms:
        command += ["--platform", platform]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip could not resolve {REQUIREMENTS.name} for {platforms}:\n{done.stderr[-2000:]}"
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in data["install"]}


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(PLATFORMS))
def test_requirements_resolve_on_slicers_python_with_its_numpy_held(tmp_path, system):
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"numpy=={SLICER_NUMPY}\n")  # what slicer_setup.held_constraints gives in Slicer 5.8
    picked = resolve(tmp_path, PLATFORMS[system], ["-c", str(constraints)])
    assert picked.get("numpy") == SLICER_NUMPY
    assert not {"torch", "torchvision", "slicer-core", "vtk"} & set(picked), sorted(picked)
    for needed in ("opencv-python-headless", "onnxruntime", "safetensors", "anycrc"):
        assert needed in picked, f"{needed} has no wheel for Slicer's Python on {system}: {sorted(picked)}"


@pytest.mark.slow
def test_without_the_hold_opencv_would_upgrade_slicers_numpy(tmp_path):
    """Why slicer_setup holds numpy: the bare file lets pip choose numpy 2 for Python 3.9 (opencv 4.12+ needs it,
    and numpy>=1.24 allows it). The bound on OpenCV alone is not enough; the hold is."""
    picked = resolve(tmp_path, PLATFORMS["linux"])
    assert picked.get("numpy", "").split(".")[0] == "2"
    assert picked["opencv-python-headless"].split(".")[:2] <= ["4", "11"]
