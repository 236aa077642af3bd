"""A tiny LiteMedSAM (32x32 input, random weights, seeded) registered in a temporary Resources folder, so the
prompt tests run the real code path (card, sha256-checked safetensors, embedding, decoder) in milliseconds.
The shipped weights are tested on their own in test_models_litemedsam.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZE = 32


def install_tiny_promptable(root: Path, monkeypatch, seed: int = 0, name: str = "litemedsam") -> Path:
    """Write ``root/Models/<name>.{json,safetensors}`` and point NERVESEG_RESOURCES at ``root``; returns root."""
    import torch

    from NerveSegLogic.commands.annotate_prompt import load_model
    from NerveSegLogic.models.card import write_card
    from NerveSegLogic.models.litemedsam import LiteMedSAM
    from NerveSegLogic.models.weights import save_weights

    models = root / "Models"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LiteMedSAM(image_size=SIZE)
    sha = save_weights(model, models / f"{name}.safetensors", architecture="litemedsam")
    data = json.loads((REPO / "Resources" / "Models" / "litemedsam.json").read_text(encoding="utf-8"))
    data.update(name=name, build={"image_size": SIZE},
                input={**data["input"], "size": [SIZE, SIZE]},
                weights={"file": f"{name}.safetensors", "sha256": sha, "dtype": "float32"})
    write_card(data, models / f"{name}.json")
    monkeypatch.setenv("NERVESEG_RESOURCES", str(root))
    load_model.cache_clear()  # the CLI keeps a loaded model per process: not one from another test's folder
    return root


def frame(height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    """A grey uint8 frame with a bright disc (something for a box to hold)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - height // 2) ** 2 + (xx - width // 2) ** 2 < 64] = 220
    return image


class CountingModel:
    """Wraps a PromptableSegmenter and counts embed() calls (the costly part that must never repeat)."""

    def __init__(self, inner):
        self.inner = inner
        self.embeds = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, image):
        self.embeds += 1
        return self.inner.embed(image)
