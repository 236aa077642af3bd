"""Where the shipped resources (model cards and weights, sample frames, UI) live.

In a source checkout and in the Slicer extension, ``Resources/`` sits beside ``NerveSegLogic/``.
``NERVESEG_RESOURCES`` overrides that, for installs that put them elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    """The Resources folder; raises FileNotFoundError naming where it looked."""
    override = os.environ.get("NERVESEG_RESOURCES")
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parent.parent / "Resources")
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        "NerveSeg resources not found; looked in: " + ", ".join(str(p) for p in candidates)
        + " (set NERVESEG_RESOURCES to the folder holding Models/ and Sample/)"
    )


def models_dir() -> Path:
    """Model cards (``<name>.json``) and their weights (``.safetensors``)."""
    return resources_dir() / "Models"


def sample_dir() -> Path:
    """The bundled sample frames (``images/``, ``masks/``, ``sample.json``) with their attribution."""
    return resources_dir() / "Sample"
