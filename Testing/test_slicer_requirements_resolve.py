"""The packages NerveSeg installs into Slicer resolve on Slicer's own Python without damaging it.

Slicer 5.6/5.8 run Python 3.9 with numpy 1.26.4; Slicer 5.10 runs Python 3.12 with numpy 2.0.2. For each, pip
resolves Resources/requirements-slicer.txt from the package index for that Python on Linux, Windows and macOS
(``pip install --dry-run --python-version X --only-binary :all:``: the metadata of the versions pip would really
pick, no guessing) with numpy held as slicer_packages holds it (the constraints come from
``slicer_packages.held_constraints`` given that Slicer's numpy), and the test looks at what would be installed: numpy
unchanged, no torch (it must come from the PyTorch extension), no slicer-core or vtk, and a wheel of every package
the module needs. It also shows why numpy must be held: without the hold pip would pick another numpy. Needs the
package index (as `make test` does to install the venv).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from NerveSegLogic.install import slicer_packages

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "Resources" / "requirements-slicer.txt"
#: Slicer versions -> (its Python, its numpy).
SLICERS = {"5.6-5.8": ("3.9", "1.26.4"), "5.10": ("3.12", "2.0.2")}
PLATFORMS = {
    "linux": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"],
    "windows": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64"],
}
#: What the module cannot run without, so it must have a wheel for every Slicer and platform.
NEEDED = ("opencv-python-headless", "onnxruntime", "onnx", "safetensors", "anycrc", "scipy", "pynrrd")


def resolve(tmp_path: Path, python: str, platforms, extra=()) -> dict:
    """{canonical name: version} pip would install for Slicer's Python ``python`` on ``platforms``."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "--python-version", python,
               "--implementation", "cp", "--only-binary=:all:", "-r", str(REQUIREMENTS), *extra]
    for platform in platforms:
        command += ["--platform", platform]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"pip could not resolve {REQUIREMENTS.name} for Python {python} on {platforms}:\n"
                                  f"{done.stderr[-2000:]}")
    data = json.loads(report.read_text())
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in data["install"]}


def held(tmp_path: Path, numpy: str) -> Path:
    """The constraints file slicer_packages writes in a Slicer whose numpy is ``numpy`` (torch not yet installed)."""
    lines = slicer_packages.held_constraints(version_of={"numpy": numpy}.get)
    assert lines == [f"numpy=={numpy}"]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(lines) + "\n")
    return constraints


@pytest.mark.parametrize("slicer", sorted(SLICERS))
def test_held_constraints_keep_each_slicers_numpy(slicer):
    """In Slicer 5.10 the hold is numpy 2.0.2, in 5.6/5.8 numpy 1.26.4; torch is held too once it is installed."""
    _, numpy = SLICERS[slicer]
    assert slicer_packages.held_constraints(version_of={"numpy": numpy}.get) == [f"numpy=={numpy}"]
    assert slicer_packages.held_constraints(version_of={"numpy": numpy, "torch": "2.4.1"}.get) == \
        [f"numpy=={numpy}", "torch==2.4.1"]


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(PLATFORMS))
@pytest.mark.parametrize("slicer", sorted(SLICERS))
def test_requirements_resolve_on_slicers_python_with_its_numpy_held(tmp_path, slicer, system):
    python, numpy = SLICERS[slicer]
    picked = resolve(tmp_path, python, PLATFORMS[system], ["-c", str(held(tmp_path, numpy))])
    assert picked.get("numpy") == numpy
    assert not {"torch", "torchvision", "slicer-core", "vtk"} & set(picked), sorted(picked)
    for needed in NEEDED:
        assert needed in picked, f"{needed} has no wheel for Slicer {slicer}'s Python {python} on {system}: " \
                                 f"{sorted(picked)}"


@pytest.mark.slow
@pytest.mark.parametrize("slicer", sorted(SLICERS))
def test_without_the_hold_pip_would_change_slicers_numpy(tmp_path, slicer):
    """Why slicer_packages holds numpy: numpy>=1.24 lets pip choose another numpy than Slicer's (numpy 2 for Python 3.9,
    a newer 2.x for 3.12). The bound on OpenCV alone (<4.12, whose wheels need numpy 2) is not enough; the hold is."""
    python, numpy = SLICERS[slicer]
    picked = resolve(tmp_path, python, PLATFORMS["linux"])
    assert picked.get("numpy") and picked["numpy"] != numpy
    if python == "3.9":
        assert picked["numpy"].split(".")[0] == "2"
    assert [int(p) for p in picked["opencv-python-headless"].split(".")[:2]] <= [4, 11]
