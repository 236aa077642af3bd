"""Evaluating a model on labelled frames exactly as the live path segments them, and the report it writes.

Every frame goes through :class:`NerveSegLogic.inference.segmenter.Segmenter` (the live path's own code: the card's
preprocessing, the model, its probabilities resampled to the frame's size and argmax (the smooth contours the live
path shows), regions smaller than a 7-pixel-radius circle dropped),
then :mod:`.metrics` compares the labelmap with the truth in the frame's own pixels.

metrics.json (see :func:`evaluate` for everything in it) is keyed by the card's class keys (``nerve``,
``blood_vessel``); ``blood_vessel`` is also reported as ``vessel``, the name issue 4 uses, with the same numbers
(``aliases`` says so).

A data set may label only some of the model's classes (the Kaggle brachial plexus set labels only the nerve):
:func:`evaluation_classes` scores the classes both share and lists the others as not labelled; it refuses data
that shares none, and data that labels a class the model lacks (its pixels would be scored as background).

Per-frame presence (:func:`presence`): while scanning, most frames hold no nerve, so besides overlap the summary
says how often the model marks a class in a frame where none is labelled, and how well a frame score ranks frames
with the class above frames without (AUC).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..classes import SegmentClass
from . import metrics
from .data import ClassMismatchError, FrameStore
from ..imaging import placement as pp
from ..imaging.overlay import render_overlay

log = logging.getLogger(__name__)

#: Extra keys in metrics.json: {alias: card key}. Issue 4 names the vessel class "vessel".
ALIASES = {"vessel": "blood_vessel"}


@dataclass
class FrameResult:
    name: str
    scores: Dict  # metrics.frame_metrics output
    labelmap: np.ndarray
    mean_dice: float


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: the metrics.json content and the per-frame results (for pictures)."""

    summary: Dict
    frames: List[FrameResult] = field(default_factory=list)


def _describe(mapping: Mapping[int, str]) -> str:
    return "{" + ", ".join(f"{label}: {key}" for label, key in sorted(mapping.items())) + "}"


def evaluation_classes(model_classes: Sequence[SegmentClass], data_classes: Sequence[SegmentClass],
                       model_name: str = "the model", data_name: str = "the data",
                       value_table: Optional[Mapping[int, int]] = None
                       ) -> Tuple[Optional[Dict[int, int]], Tuple[SegmentClass, ...], Tuple[SegmentClass, ...]]:
    """What an evaluation can score: (translation {data label: model label} or None when they already agree,
    the model's classes the data labels (scored), the model's classes it does not label (not scored)).

    value_table: the data's ``{value in the mask files: data label}``, so errors name the value in the files.
    Raises :class:`~.data.ClassMismatchError` when the data labels a class the model lacks (naming the value, the
    class and the model's classes) or when the two share no class.
    """
    model = {c.key: c.label for c in model_classes}
    data = {c.key: c.label for c in data_classes}
    expected = _describe({label: key for key, label in model.items()})
    found = _describe({label: key for key, label in data.items()})
    example = ",".join(f"{label}={key}" for key, label in sorted(model.items(), key=lambda kv: kv[1]))
    extra = [key for key in data if key not in model]
    if extra:
        values = {}
        for value, label in (value_table or {}).items():
            values.setdefault(int(label), []).append(int(value))
        where = "; ".join(
            f"label value {', '.join(str(v) for v in sorted(values.get(data[key], [data[key]])))} is {key!r}"
            for key in extra)
        raise ClassMismatchError(
            f"{data_name} labels a class {model_name} lacks: {where}. {model_name} segments {expected} (label value: "
            f"class) and {data_name} has {found}. Map each label value to one of the model's classes or to "
            f"background with --map (for example --map {example}), or pick a model trained on these classes.")
    shared = [key for key in model if key in data]
    if not shared:
        raise ClassMismatchError(
            f"{data_name} shares no class with {model_name}: {model_name} segments {expected} (label value: class) "
            f"but {data_name} has {found}. Give the data's label values the model's classes with --map (for "
            f"example --map {example}), or pick a model trained on these classes.")
    scored = tuple(c for c in model_classes if c.key in data)
    unlabelled = tuple(c for c in model_classes if c.key not in data)
    translation = {data[key]: model[key] for key in shared}
    identity = all(source == target for source, target in translation.items())
    return (None if identity else translation), scored, unlabelled


def presence(truth: Sequence[bool], marked: Sequence[bool], scores: Sequence[float],
             areas: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """Per-frame presence of one class over a data set.

    truth: the frame labels the class (any pixel); marked: the live path's labelmap shows it (after small regions
    are dropped); scores: how strongly the model says the class is there (higher = more likely).
    Returns ``frames``, ``frames_with``/``frames_without`` (labelled), ``false_frame_rate`` (frames without the
    class where the model marks it / frames without; NaN when every frame has it), ``missed_frame_rate`` (frames
    with it where the model marks nothing / frames with), ``auc`` (ROC AUC of ``scores`` for "the class is in this
    frame", from ranks as :func:`.metrics.pixel_auc`: Mann-Whitney U, ties count half; NaN when all frames agree)
    and, when ``areas`` (the class's pixels in the labelmap) are given, ``auc_area``: the same AUC with the marked
    area as the frame score.
    """
    truth = np.asarray(truth, dtype=bool)
    marked = np.asarray(marked, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if not truth.shape == marked.shape == scores.shape:
        raise ValueError(f"truth, marked and scores differ in length: {truth.shape}, {marked.shape}, {scores.shape}")
    with_class, without_class = int(truth.sum()), int((~truth).sum())
    return {"frames": int(truth.size), "frames_with": with_class, "frames_without": without_class,
            "false_frames": int((marked & ~truth).sum()), "missed_frames": int((~marked & truth).sum()),
            "false_frame_rate": float((marked & ~truth).sum() / without_class) if without_class else math.nan,
            "missed_frame_rate": float((~marked & truth).sum() / with_class) if with_class else math.nan,
            "auc": metrics.pixel_auc(scores, truth) if truth.size else math.nan,
            "auc_area": (metrics.pixel_auc(np.asarray(areas, dtype=np.float64), truth)
                         if areas is not None and truth.size else math.nan)}


def _presence_scores(result, classes) -> Dict[str, float]:
    """{class key: the frame's score for "the class is here"}: the class's highest probability inside the part
    of the model input the frame fills (semantic models) or its best instance score (instance models); 0 when
    the model gives neither."""
    out = {}
    placement = getattr(result, "placement", None)
    for cls in classes:
        score = 0.0
        if result.probabilities is not None:
            channel = result.probabilities[cls.label]
            # in the model's input (of the frame, or of its region when one was set): its part the image fills
            if placement is not None and (channel.shape != result.labelmap.shape
                                          or getattr(result, "region", None) is not None):
                channel = channel[:placement.valid_h, :placement.valid_w]
            score = float(channel.max()) if channel.size else 0.0
        elif result.instances is not None:
            score = max((float(i.score) for i in result.instances if int(i.label) == cls.label), default=0.0)
        out[cls.key] = score
    return out


def _spacing_rc(spacing) -> Optional[tuple]:
    # Samples give (along a row = x, along a column = y) mm; metrics take (row, column) = (y, x).
    if spacing is None:
        return None
    return (float(spacing[1]), float(spacing[0]))


def _class_probabilities(result, classes) -> Optional[Dict[str, np.ndarray]]:
    """Per-class pixel scores in frame size for AUC: a semantic model's probabilities brought back to the frame
    (with the result's placement), or for an instance model the highest score of an instance of that class
    covering the pixel."""
    height, width = result.labelmap.shape
    if result.probabilities is not None:
        probabilities = result.probabilities
        region = getattr(result, "region", None)  # the model saw only this part of the frame
        if probabilities.shape[1:] != (height, width) or region is not None:
            if getattr(result, "placement", None) is None:
                return None
            probabilities = pp.restore(probabilities, result.placement)
            if region is not None:
                probabilities = region.place_maps(probabilities, height, width)
        return {c.key: probabilities[c.label] for c in classes}
    if result.instances is not None:
        maps = {c.key: np.zeros((height, width), dtype=np.float32) for c in classes}
        by_label = {c.label: c.key for c in classes}
        for instance in result.instances:
            key = by_label.get(int(instance.label))
            if key is not None:
                np.maximum(maps[key], np.where(instance.mask, np.float32(instance.score), 0), out=maps[key])
        return maps
    return None


def evaluate(segmenter, frames: FrameStore, progress: bool = False, auc: bool = True,
             keep_labelmaps: bool = True, scored: Optional[Sequence[SegmentClass]] = None) -> Evaluation:
    """Segment every frame of ``frames`` with ``segmenter`` and score it against the truth.

    scored: the model's classes the data labels (default: all of them; see :func:`evaluation_classes`); the
    others are listed in ``not_labelled`` and scored nowhere. A frame whose ``labelled`` names only some classes
    is scored on those only.

    Returns an :class:`Evaluation` whose ``summary`` holds ``model``, ``n_images``, ``classes`` ({key: label} of
    the scored classes), ``not_labelled`` (the model's class keys the data does not label), ``presence`` ({key:
    :func:`presence` with the highest class probability as the frame score}),
    ``per_class`` ({key: {dice, iou, precision, recall, hd95_px, hd95_mm, auc}}, each the mean over frames where it
    is defined), ``detection`` ({key: {precision, recall, f1} means over frames, plus ``pooled`` counts}),
    ``spread`` (std and n of each mean), ``coco`` (instance models: bbox/segm AP50, AP60, AP70, AP), ``ms_per_frame``
    (median wall time of one segment call) and ``per_image``.
    """
    card = segmenter.card
    classes = tuple(card.classes) if scored is None else tuple(scored)
    if not classes:
        raise ValueError(f"nothing to score: none of {card.name}'s classes was given to evaluate")
    labels = {c.key: c.label for c in classes}
    not_labelled = [c.key for c in card.classes if c.key not in labels]
    instance_model = card.task == "instance"
    results: List[FrameResult] = []
    truth_objects, found_objects, timings = [], [], []
    present: Dict[str, List[tuple]] = {key: [] for key in labels}
    presence_scores: List[Dict[str, float]] = []
    iterator = range(len(frames))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"evaluate {card.name}", unit="frame")
    for index in iterator:
        frame = frames[index]
        start = time.perf_counter()
        result = segmenter.segment(frame.image)
        timings.append((time.perf_counter() - start) * 1000.0)
        probabilities = _class_probabilities(result, classes) if auc else None
        # a frame that labels only some classes (an annotation store's nerve-only version) is scored on those
        frame_labels = labels
        if getattr(frame, "labelled", None) is not None:
            frame_labels = {key: label for key, label in labels.items() if label in frame.labelled}
        scores = metrics.frame_metrics(result.labelmap, frame.mask, frame_labels, probabilities,
                                       _spacing_rc(frame.spacing))
        dices = [scores["per_class"][key]["dice"] for key in frame_labels]
        finite = [d for d in dices if not math.isnan(d)]
        results.append(FrameResult(frame.name, scores, result.labelmap if keep_labelmaps else None,
                                   float(np.mean(finite)) if finite else math.nan))
        frame_scores = _presence_scores(result, classes)
        presence_scores.append(frame_scores)
        for key, label in frame_labels.items():
            area = int(np.count_nonzero(result.labelmap == label))
            present[key].append((bool((frame.mask == label).any()), area > 0, frame_scores[key], area))
        if instance_model:
            truth_objects.append(metrics.instances_from_labelmap(frame.mask, labels.values()))
            found_objects.append([metrics.InstanceMask(int(i.label), i.mask, float(i.score), tuple(i.box))
                                  for i in (result.instances or [])])
    summary = metrics.summarize([r.scores for r in results])
    for key in labels:  # a class no frame here labels (frames that label only some classes): NaN, n = 0
        if key not in summary["per_class"]:
            summary["per_class"][key] = {m: math.nan for m in metrics.SEGMENTATION_METRICS}
            summary["detection"][key] = dict({m: math.nan for m in metrics.DETECTION_METRICS},
                                             pooled=metrics.DetectionCounts(0, 0, 0).as_dict())
            summary["spread"][key] = {m: {"std": math.nan, "n": 0} for m in
                                      list(metrics.SEGMENTATION_METRICS)
                                      + ["detection_" + d for d in metrics.DETECTION_METRICS]}
    out: Dict = {
        "model": card.name,
        "task": card.task,
        "n_images": len(results),
        "classes": labels,
        "not_labelled": not_labelled,
        "aliases": {alias: key for alias, key in ALIASES.items() if key in labels},
        "per_class": summary["per_class"],
        "detection": summary["detection"],
        "spread": summary["spread"],
    }
    out["presence"] = {key: presence(*zip(*rows)) if rows else presence([], [], [], [])
                       for key, rows in present.items()}
    for alias, key in out["aliases"].items():
        out["per_class"][alias] = out["per_class"][key]
        out["detection"][alias] = out["detection"][key]
        out["presence"][alias] = out["presence"][key]
    if instance_model:
        out["coco"] = metrics.coco_average_precision(truth_objects, found_objects, labels)
    out["mean_foreground_dice"] = _mean([summary["per_class"][k]["dice"] for k in labels])
    out["ms_per_frame"] = float(np.median(timings)) if timings else math.nan
    out["per_image"] = [{"name": r.name, **r.scores, "presence_score": p} for r, p in zip(results, presence_scores)]
    return Evaluation(summary=out, frames=results)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def json_ready(value):
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, data) -> None:
    """Write ``data`` as strict JSON (NaN as null) atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(json_ready(data), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def write_report(evaluation: Evaluation, frames: FrameStore, out_dir: Path, classes, context: Mapping,
                 pictures: int = 3) -> Dict[str, Path]:
    """Write ``metrics.json``, ``report.md`` and overlay PNGs of the ``pictures`` best and worst frames (by mean
    foreground Dice) into ``out_dir``; returns the paths. ``context`` (data, weights, device, command) is recorded
    in both files."""
    import cv2

    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    summary = dict(evaluation.summary)
    scored_classes = [c for c in classes if c.key in summary["classes"]]  # overlays still show every class
    summary.update({"context": dict(context), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
                    "conventions": metrics.__doc__.split("Conventions", 1)[-1].strip()})
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md"}
    write_json(paths["metrics"], summary)

    scored = [(r.mean_dice, i) for i, r in enumerate(evaluation.frames) if not math.isnan(r.mean_dice)]
    scored.sort()
    worst = [i for _, i in scored[:pictures]]
    best = [i for _, i in reversed(scored[-pictures:])] if scored else []
    lines = [f"# Evaluation of {summary['model']}", "",
             f"- data: {context.get('data', '?')} ({summary['n_images']} frames"
             + (f", {context['negative_windows']} of them windows cut where nothing is labelled (frames without a "
                f"nerve; each a magnified part of a frame)" if context.get("negative_windows") else "") + ")",
             f"- weights: {context.get('weights', '?')}",
             f"- device: {context.get('device', '?')}; median {_fmt(summary['ms_per_frame'], 1)} ms per frame "
             f"(whole live path: preprocessing, model, postprocessing)",
             *([f"- test-time augmentation: {context['tta']} (each frame segmented from the mean of its own and its "
                f"mirror image's class probabilities; twice the model time, not what the live path does)"]
               if context.get("tta", "none") != "none" else []),
             f"- machine: {summary['machine']}; date: {summary['date']}",
             f"- command: `{context.get('command', '?')}`", "",
             "Each figure is the mean over frames where it is defined (n = frames counted). "
             "HD95 in pixels of the frame; in mm only where the data gives a pixel spacing.", "",
             *([f"Not scored: the data does not label {', '.join(summary['not_labelled'])} (the model's other "
                f"classes are scored on their own pixels; a pixel the model gives an unlabelled class counts as not "
                f"the scored class).", ""] if summary.get("not_labelled") else []),
             "| class | Dice | IoU | precision | recall | HD95 px | HD95 mm | pixel AUC | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cls in scored_classes:
        m, n = summary["per_class"][cls.key], summary["spread"][cls.key]["dice"]["n"]
        lines.append(f"| {cls.name} | {_fmt(m['dice'])} | {_fmt(m['iou'])} | {_fmt(m['precision'])} | "
                     f"{_fmt(m['recall'])} | {_fmt(m['hd95_px'], 1)} | {_fmt(m['hd95_mm'], 2)} | {_fmt(m['auc'])} | "
                     f"{n} |")
    lines += ["", "Detection (Smistad's rule: a true region is found when a predicted region overlaps it with "
                  "Dice > 0.25; regions under a 7-pixel-radius circle ignored). Means over frames, and pooled over "
                  "all regions:", "",
              "| class | precision | recall | F1 | pooled TP / FP / FN | pooled F1 |", "|---|---|---|---|---|---|"]
    for cls in scored_classes:
        d = summary["detection"][cls.key]
        p = d["pooled"]
        lines.append(f"| {cls.name} | {_fmt(d['precision'])} | {_fmt(d['recall'])} | {_fmt(d['f1'])} | "
                     f"{p['tp']} / {p['fp']} / {p['fn']} | {_fmt(p['f1'])} |")
    lines += ["", "Per-frame presence: a frame holds the class when any pixel of it is labelled; the model marks it "
                  "when the live path's labelmap shows it. Frame score for the AUC: the class's highest probability in "
                  "the frame (instance models: the best instance score); or the pixels the labelmap gives it.", "",
              "| class | frames with / without | false-class frames (rate) | missed frames (rate) | presence AUC | "
              "AUC by marked area |",
              "|---|---|---|---|---|---|"]
    for cls in scored_classes:
        p = summary["presence"][cls.key]
        lines.append(f"| {cls.name} | {p['frames_with']} / {p['frames_without']} | {p['false_frames']} "
                     f"({_fmt(p['false_frame_rate'])}) | {p['missed_frames']} ({_fmt(p['missed_frame_rate'])}) | "
                     f"{_fmt(p['auc'])} | {_fmt(p['auc_area'])} |")
    if "coco" in summary:
        lines += ["", "COCO average precision (pycocotools; all frames and classes):", "",
                  "| | AP50 | AP60 | AP70 | AP 0.5:0.95 |", "|---|---|---|---|---|"]
        for iou_type, ap in summary["coco"].items():
            lines.append(f"| {iou_type} | {_fmt(ap['AP50'])} | {_fmt(ap['AP60'])} | {_fmt(ap['AP70'])} | "
                         f"{_fmt(ap['AP'])} |")
    for title, chosen in (("Best frames", best), ("Worst frames", worst)):
        lines += ["", f"## {title}", "", "Left: truth. Right: the model (what the live path would show).", ""]
        for index in chosen:
            result, frame = evaluation.frames[index], frames[index]
            if result.labelmap is None:
                continue
            picture = np.concatenate([
                render_overlay(frame.image, frame.mask, classes, caption=f"{frame.name} truth"),
                render_overlay(frame.image, result.labelmap, classes,
                               caption=f"{frame.name} model, Dice {result.mean_dice:.2f}")], axis=1)
            file_name = f"{title.split()[0].lower()}_{frame.name}.png"
            cv2.imwrite(str(out_dir / "overlays" / file_name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            lines.append(f"![{frame.name}](overlays/{file_name})  ")
            lines.append(f"{frame.name}: mean foreground Dice {result.mean_dice:.3f}")
            lines.append("")
    paths["report"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
