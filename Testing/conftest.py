"""Shared test fixtures: paths of the repository and the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Tests share two cores with each other's threads; one torch thread keeps timings and CPU use predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return REPO / "Resources" / "Sample"


@pytest.fixture
def resources_without_weights(tmp_path, monkeypatch) -> Path:
    """A Resources folder (NERVESEG_RESOURCES) whose model cards ship no weights, for the refusals that only a
    weightless card triggers; the real cards are copied with ``"weights": null``, the sample is linked."""
    import json

    root = tmp_path / "Resources"
    (root / "Models").mkdir(parents=True)
    for card in (REPO / "Resources" / "Models").glob("*.json"):
        data = json.loads(card.read_text(encoding="utf-8"))
        data["weights"] = None
        (root / "Models" / card.name).write_text(json.dumps(data), encoding="utf-8")
    (root / "Sample").symlink_to(REPO / "Resources" / "Sample")
    monkeypatch.setenv("NERVESEG_RESOURCES", str(root))
    return root
