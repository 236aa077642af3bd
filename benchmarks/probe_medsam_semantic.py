#!/usr/bin/env python3
"""Probe (not a shipped model): are LiteMedSAM's image embeddings a better start for nerves on unseen scans?

LiteMedSAM's TinyViT encoder was distilled on medical images, ultrasound among them (issue 12 names it as a
pretrained encoder to build on). Fine-tuning it here is out of reach (about 1.2 s per 256x256 frame forward on one
CPU core, several times that backward), so this probe keeps the encoder frozen: every frame's embedding
(256 x 64 x 64, the annotation tools' cache format) is computed once, and a small convolutional head
(1x1 conv 256->96, BN, ReLU, 3x3 conv 96->64, BN, ReLU, 1x1 conv -> background/nerve/vessel; logits upsampled
bilinearly x4 to the 256x256 letterbox) is trained on the embeddings of the training blocks (Dice + cross-entropy,
AdamW, cosine decay, horizontal flips as a second embedding per frame when ``--flip``). Each fold's held-out block is
then segmented through the live path's own :class:`Segmenter` (letterbox, smooth contours, small-region removal) and
scored with ``nerveseg evaluate``'s code, so the figures compare with benchmarks/comparison.md.

    python benchmarks/probe_medsam_semantic.py --data ../shared/data/usgra-seg --embeddings runs/medsam-embeddings

Nothing is shipped; the report (--report, Markdown + .json beside it) says what each fold scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "benchmarks"):  # the package, and compare_models beside this script
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


class EmbeddingHead(nn.Module):
    """(B, 256, 64, 64) embedding -> (B, 3, 256, 256) logits."""

    def __init__(self, channels: int = 256, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU(inplace=True),
            nn.Conv2d(96, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, classes, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.body(embedding), scale_factor=4, mode="bilinear", align_corners=False)


class CachedEmbeddingModel(nn.Module):
    """What the Segmenter runs: the letterboxed input -> its cached embedding (looked up by the input's bytes) ->
    the head -> class probabilities. The frozen encoder's output is the cache, so nothing is recomputed."""

    def __init__(self, head: EmbeddingHead, cache: Dict[str, np.ndarray]):
        super().__init__()
        self.head, self.cache = head, cache

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        embeddings = [self.cache[_key(x.numpy())] for x in batch]
        tensor = torch.from_numpy(np.stack(embeddings).astype(np.float32))
        return torch.softmax(self.head(tensor), dim=1)


def _key(model_input: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(model_input, dtype=np.float32).tobytes()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--embeddings", type=Path, required=True, help="cache folder (made when missing)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=str, default=None, help="comma-separated fold numbers (default: all)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--flip", action="store_true", help="also train on each frame's horizontally flipped embedding")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "medsam_semantic.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from compare_models import _scores  # noqa: E402  (same folder)

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.inference.promptable import PromptableSegmenter
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.data import FrameStore, split_indices
    from NerveSegLogic.train.evaluate import evaluate
    from NerveSegLogic.train.losses import semantic_loss

    dice_ce = semantic_loss("dice_ce")  # the trainer's: MONAI's DiceCELoss, Dice over the foreground classes + CE

    dataset = open_dataset(args.data)
    names = list(dataset.names())
    if sorted(names) != names:
        raise SystemExit("expected the data set's frames sorted by name (contiguous blocks are cut in that order)")
    encoder = PromptableSegmenter.from_name("litemedsam", backend="onnx", threads=args.threads)
    spec = encoder.spec
    args.embeddings.mkdir(parents=True, exist_ok=True)

    def embedding_of(index: int, flipped: bool) -> np.ndarray:
        stem = Path(names[index]).stem + ("-flip" if flipped else "")
        path = args.embeddings / f"{stem}-{encoder.model_sha256[:12]}.npy"
        if path.is_file():
            return np.load(path)
        image = dataset[index].image
        embedding = encoder.embed(np.ascontiguousarray(image[:, ::-1]) if flipped else image).astype(np.float16)
        np.save(path, embedding)
        return embedding

    started = time.perf_counter()
    embeddings = {(i, f): embedding_of(i, f) for i in range(len(names)) for f in ((False, True) if args.flip
                                                                                  else (False,))}
    embed_minutes = (time.perf_counter() - started) / 60

    def target_of(index: int, flipped: bool) -> np.ndarray:
        mask = dataset[index].mask
        return pp.place_mask(np.ascontiguousarray(mask[:, ::-1] if flipped else mask), spec).astype(np.int64)

    targets = {key: target_of(*key) for key in embeddings}
    cache = {}
    for index in range(len(names)):
        model_input, _ = pp.preprocess(dataset[index].image, spec)
        cache[_key(model_input)] = embeddings[(index, False)]

    base = registry.card("effnet2-unet")  # classes and task of the live models; the input is LiteMedSAM's
    card = dataclasses.replace(base, name="medsam-embedding-head", input=spec)
    folds = range(args.folds) if not args.only_folds else [int(k) for k in args.only_folds.split(",")]
    rows: List[Dict] = []
    for fold in folds:
        train_indices, held_out = split_indices(names, args.folds, fold)
        keys = [(i, f) for (i, f) in embeddings if i in set(train_indices)]
        head = EmbeddingHead()
        optimiser = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
        steps = args.epochs * max(1, len(keys) // args.batch)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps, eta_min=args.lr * 0.01)
        rng = np.random.default_rng(fold)
        t0 = time.perf_counter()
        head.train()
        for _ in range(args.epochs):
            order = rng.permutation(len(keys))
            for start in range(0, len(order) - args.batch + 1, args.batch):
                chosen = [keys[j] for j in order[start:start + args.batch]]
                x = torch.from_numpy(np.stack([embeddings[k] for k in chosen]).astype(np.float32))
                y = torch.from_numpy(np.stack([targets[k] for k in chosen]))
                loss = dice_ce(head(x), y, head)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
        train_minutes = (time.perf_counter() - t0) / 60
        head.eval()
        segmenter = Segmenter.from_module(card, CachedEmbeddingModel(head, cache), device="cpu", threads=args.threads)
        frames = FrameStore(dataset, None, list(held_out))
        summary = evaluate(segmenter, frames, progress=False, keep_labelmaps=False).summary
        scores = _scores(summary)
        scores.update(fold=fold, held_out=len(held_out), train_minutes=round(train_minutes, 2),
                      last_loss=round(loss.item(), 4))
        rows.append(scores)
        print(json.dumps(scores), flush=True)

    result = {"command": "python benchmarks/probe_medsam_semantic.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
              "epochs": args.epochs, "flip": args.flip, "embed_minutes": round(embed_minutes, 1), "folds": rows}
    args.report.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = ["# Probe: a head on LiteMedSAM's frozen image embeddings, cross-validated by blocks", "",
             f"Command: `{result['command']}`", "",
             "| fold | nerve Dice | vessel Dice | nerve F1 | head training (min) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['nerve_dice']:.3f} | {r['vessel_dice']:.3f} | {r['nerve_f1']:.3f} | "
                     f"{r['train_minutes']} |")
    if len(rows) > 1:
        lines.append("| mean | " + " | ".join(f"{np.mean([r[k] for r in rows]):.3f}"
                                            for k in ("nerve_dice", "vessel_dice", "nerve_f1")) + " | |")
    args.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
