"""Cross-validation by contiguous blocks and held-out evaluation, as the benchmarks score models.

The folds are :func:`NerveSegLogic.train.data.block_folds`' contiguous blocks of the frames sorted by name (never
random frames: neighbouring frames come from the same scan). A fold's run (``nerveseg train --folds F --fold K``)
keeps the epoch that scored best on its validation block, which in a fold IS the held-out block, so its figures are
taken with :func:`use_last_weights` (the state at the end of training, nothing chosen on the test frames).

Used by benchmarks/accuracy (compare_models.py, eval_heldout.py, adaptation.py, calibration_cv.py, ensemble_cv.py,
nerve_bias_cv.py, train_bpmsegnet_gpu.py), benchmarks/int8/int8_recipes.py and benchmarks/release/ship_seed.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from . import data as td
from ..datasets.readers import open_dataset
from ..models import registry
from ..models.card import ModelCard
from ..models.weights import read_weights
from .data import block_folds, FrameStore

#: The repository this package sits in (reports name paths relative to it).
REPO = Path(__file__).resolve().parents[2]

#: card.json ``training.run.weights`` of a fold whose weights are the state at the end of training
LAST_WEIGHTS = "end of training"

#: INT8 calibration frames per fold: spread evenly over the fold's training frames (never its held-out block).
INT8_CALIBRATION_FRAMES = 24


# ------------------------------------------------------------------------------------------------------ folds
def block_names(data: Path, folds: int = 5) -> List[List[str]]:
    """The frame names of each of ``folds`` contiguous blocks of the data set at ``data`` (sorted by name)."""
    names = sorted(open_dataset(data).names())
    return [[names[i] for i in block] for block in block_folds(names, folds)]


def fold_frames(data: Path, wanted: List[str]):
    """A FrameStore of the frames of ``data`` named ``wanted``, in that order (usgra-seg's labels are the models'
    labels: no class translation)."""
    dataset = open_dataset(data)
    index = {name: i for i, name in enumerate(dataset.names())}
    return FrameStore(dataset, None, [index[name] for name in wanted])


def use_last_weights(model: str, run_dir: Path) -> Dict:
    """Make a fold's weights the model's state at the end of training, from the run's checkpoint.

    ``nerveseg train`` keeps the epoch with the best Dice on its validation block, and in a fold that block IS the
    held-out block: scoring those weights on it would be a choice made on the test frames, which flatters the
    figure it selects by (mean Dice), most for noisy, undertrained models. A fixed budget, then the last state,
    chooses nothing. The run's ``<model>.safetensors`` and card.json (sha256, ``training.run.weights``, the notes)
    are rewritten to say so. Returns the card's ``training.run.weights_after``."""
    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, which importing this
    # module must not.
    from .evaluate import write_json
    from .checkpoints import read_checkpoint

    found = read_checkpoint(run_dir)
    if found is None:
        raise SystemExit(f"{run_dir}: no checkpoint to take the last weights from; delete the folder to retrain")
    record, tensors = found
    card_path = run_dir / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    module = registry.build_from_card(ModelCard.from_dict(card, None))
    module.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    path = run_dir / f"{model}.safetensors"
    temporary = run_dir / f".{model}.safetensors.last"
    sha256 = registry.save_weights(module, temporary)
    os.replace(temporary, path)
    card["weights"] = dict(card["weights"], sha256=sha256)
    run = card["training"]["run"]
    run["weights"] = LAST_WEIGHTS
    run["weights_after"] = {"epochs": record["epoch"], "steps_into_next_epoch": record.get("position", 0),
                            "global_step": record.get("global_step")}
    best_note = "Weights of the epoch with the best validation mean Dice"
    text = (f"Weights at the end of training ({record['epoch']} epochs"
            + (f" and {record['position']} steps" if record.get("position") else "")
            + "): no choice was made on the held-out block (benchmarks/accuracy/compare_models.py).")
    card["training"]["notes"] = [n for n in card["training"].get("notes", []) if not n.startswith(best_note)] + [text]
    write_json(card_path, card)
    return run["weights_after"]


def base_run(base_runs: Path, block: int, data: Path, threads: int, model: str = "effnet2-unet") -> Path:
    """The run ``<base_runs>/fold<block>``: ``model``'s card recipe trained on the other four of five blocks
    (``nerveseg train --folds 5 --fold block``, run here when its card.json is missing), with its last weights."""
    run = base_runs / f"fold{block}"
    card = run / "card.json"
    if not card.is_file():
        command = [sys.executable, "-m", "NerveSegLogic.cli", "train", "--model", model, "--data", str(data),
                   "--folds", "5", "--fold", str(block), "--out", str(run), "--threads", str(threads),
                   "--no-progress"]
        print("training base:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    if json.loads(card.read_text())["training"]["run"].get("weights") != LAST_WEIGHTS:
        use_last_weights(model, run)
    return run


# ----------------------------------------------------------------------------------------------------- figures
def summary_scores(summary: Dict) -> Dict:
    """Nerve Dice, vessel Dice (None without a vessel class) and nerve detection F1 of an evaluation summary."""
    per_class, detection = summary["per_class"], summary["detection"]
    return {"nerve_dice": per_class["nerve"]["dice"], "vessel_dice": per_class.get("blood_vessel", {}).get("dice"),
            "nerve_f1": detection["nerve"]["f1"]}


def stats(values: List[Optional[float]]) -> Dict:
    """Mean, population std and count over folds of the finite values (None and NaN left out)."""
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def format_stat(s: Optional[Dict], digits: int = 3) -> str:
    """A :func:`stats` figure as a table cell: ``0.662 ± 0.058``, ``0.662 (1 fold)``, or ``-`` when missing."""
    if not s or s.get("mean") is None:
        return "-"
    if s.get("n") == 1:  # one fold: no spread to show
        return f"{s['mean']:.{digits}f} (1 fold)"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def auc(positive: List[float], negative: List[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not positive or not negative:
        return math.nan
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def portable(arguments: List[str]) -> List[str]:
    """Command-line arguments with absolute paths made relative to the repository (no machine paths in reports)."""
    return [os.path.relpath(a, REPO) if os.path.isabs(a) else a for a in arguments]


# ------------------------------------------------------------------------------------------- held-out block
def load_run(run: Path, which: str):
    """(card, model in eval mode, checkpoint record) of a ``nerveseg train`` folder; ``which`` is ``last`` (the
    checkpoint's state at the end of training) or ``best`` (the run's ``<model>.safetensors``)."""
    import torch

    from .checkpoints import read_checkpoint

    found = read_checkpoint(run)
    if found is None:
        raise SystemExit(f"{run}: no checkpoint.json; is this a nerveseg train output folder?")
    record, tensors = found
    setup = record["setup"]
    base = registry.card(setup["model"])
    data = base.to_json()
    data["input"] = dict(data["input"], size=list(setup["input_size"]))
    data["build"] = dict(data["build"], **setup.get("build_overrides", {}))
    card = ModelCard.from_dict(data, base.path)
    model = registry.build_from_card(card)
    if which == "last":
        if int(record.get("position") or 0):
            raise SystemExit(f"{run}: the checkpoint was written {record['position']} frames into epoch "
                             f"{int(record['epoch']) + 1}, so its weights are no epoch's; finish the epoch (run the "
                             "same command again, with --stop-after-epoch to end at an epoch) and score it then")
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    else:
        state = read_weights(run / f"{card.name}.safetensors", None)
    model.load_state_dict(state, strict=True)
    torch.set_grad_enabled(False)
    return card, model.eval(), record


def held_out_store(data_dir: Path, card, folds: int, fold: int, expected_names: List[str]):
    """The FrameStore of block ``fold`` of ``folds`` (the card's classes), refused unless its frames are
    ``expected_names`` (the run's own validation block)."""
    dataset = open_dataset(data_dir)
    translation = td.label_translation(card.classes, dataset.classes, card.name, str(data_dir))
    names = list(dataset.names())
    order = sorted(range(len(names)), key=lambda i: names[i])
    _, val_idx = td.split_indices([names[i] for i in order], folds, fold)
    store = td.FrameStore(dataset, translation, [order[i] for i in val_idx])
    held = [f.name for f in store.frames]
    if held != list(expected_names):
        raise SystemExit(f"the held-out block ({held[:2]}...) is not the run's validation block "
                         f"({list(expected_names)[:2]}...): wrong --folds/--fold or data")
    return store


def score_held_out(segmenter, store, seed: int, negatives_rate: float) -> Dict:
    """The held-out figures of ``segmenter`` on ``store``: per-class Dice, HD95 and detection F1 (mean, std and
    count over frames), the false-nerve rate on nerve-free windows cut from the frames
    (:func:`NerveSegLogic.train.negatives.negative_frames` with ``seed``), the nerve presence AUC and the median
    ms per frame."""
    from .evaluate import evaluate
    from .negatives import negative_frames

    evaluation = evaluate(segmenter, store, auc=False, keep_labelmaps=False)
    summary = evaluation.summary
    nerve_label = next(c.label for c in segmenter.card.classes if c.key == "nerve")
    negatives = negative_frames(store.frames, seed=seed, rate=negatives_rate, per_frame=1)
    false_frames, negative_scores, positive_scores = 0, [], []
    for frame in negatives:
        result = segmenter.segment(frame.image)
        false_frames += int((result.labelmap == nerve_label).any())
        negative_scores.append(float(result.probabilities[nerve_label].max()))
    for frame in store.frames:
        if (frame.mask == nerve_label).any():
            positive_scores.append(float(segmenter.segment(frame.image).probabilities[nerve_label].max()))
    per_class, detection, spread = summary["per_class"], summary["detection"], summary["spread"]

    def stat(key, metric, source="per_class"):
        value = (per_class if source == "per_class" else detection)[key][metric]
        extra = spread[key][metric if source == "per_class" else "detection_" + metric]
        return {"mean": value, "std": extra["std"], "n": extra["n"]}

    return {
        "frames": summary["n_images"],
        "nerve_dice": stat("nerve", "dice"), "vessel_dice": stat("blood_vessel", "dice"),
        "nerve_f1": stat("nerve", "f1", "detection"), "vessel_f1": stat("blood_vessel", "f1", "detection"),
        "nerve_hd95_px": stat("nerve", "hd95_px"), "vessel_hd95_px": stat("blood_vessel", "hd95_px"),
        "negative_frames": len(negatives),
        "false_nerve_frame_rate": false_frames / len(negatives) if negatives else math.nan,
        "nerve_presence_auc": auc(positive_scores, negative_scores),
        "ms_per_frame_median": summary["ms_per_frame"],
    }


def images_by_name(data: Path, limit: Optional[int] = None) -> List[np.ndarray]:
    """The images of the data set at ``data``, its frames sorted by name (the first ``limit`` of them)."""
    dataset = open_dataset(data)
    names = dataset.names()
    order = sorted(range(len(names)), key=lambda i: names[i])[:limit]
    return [dataset[i].image for i in order]
