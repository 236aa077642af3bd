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


class ScriptedPromptable:
    """A promptable model whose answer a test can work out by hand (for tests of what refinement, propagation and
    the panel SAVE, which a random tiny LiteMedSAM cannot predict): its "embedding" is the frame itself, and a
    prompt's mask is the bright pixels (> ``threshold``) inside the box. Its predicted IoU is ``sure`` when every
    bright structure the box holds part of lies wholly inside it, else ``unsure`` (the box cuts it, as when the
    structure moved out of it). ``calls`` records each (box, points)."""

    click_mode = "model"
    backend = "scripted"

    def __init__(self, name: str = "scripted-sam", threshold: int = 128, sure: float = 0.95, unsure: float = 0.5,
                 classes=None):
        from types import SimpleNamespace

        labels = dict(classes or {1: "nerve", 2: "blood_vessel"})
        self.card = SimpleNamespace(name=name, labels=labels, raw={})
        self.model_sha256 = "5c" * 32
        self.threshold, self.sure, self.unsure = threshold, sure, unsure
        self.calls = []
        self.embeds = 0

    def embed(self, image):
        self.embeds += 1
        return np.asarray(image, dtype=np.float32)[np.newaxis]

    def predict(self, embedding, image_shape, box=None, points=()):
        image = np.asarray(embedding, dtype=np.float32)[0]
        height, width = int(image_shape[0]), int(image_shape[1])
        self.calls.append((None if box is None else tuple(float(v) for v in box), tuple(points)))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = np.zeros((height, width), bool)
        inside[y0:y1 + 1, x0:x1 + 1] = True
        bright = image > self.threshold
        mask = bright & inside
        if not mask.any():
            return mask, self.unsure
        import cv2

        _, components = cv2.connectedComponents(bright.astype(np.uint8), connectivity=8)
        met = np.isin(components, np.unique(components[mask]))  # the bright structures the box holds part of
        return mask, self.unsure if (met & ~inside).any() else self.sure

    def mask(self, embedding, image_shape, box=None, points=()):
        return self.predict(embedding, image_shape, box, points)[0]


def disc_frame(cx: float, cy: float, radius: float = 6, height: int = 40, width: int = 48) -> np.ndarray:
    """A dark uint8 frame with one bright disc (value 220) centred at (cx, cy); none when cx is None."""
    image = np.full((height, width), 30, dtype=np.uint8)
    if cx is not None:
        yy, xx = np.mgrid[:height, :width]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 220
    return image
