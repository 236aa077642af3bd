"""Fitting a model's presence calibration and thresholds on labelled frames it was not trained on.

:func:`collect` segments frames exactly as the live path does and keeps, per frame and class, the raw presence score
(:func:`~NerveSegLogic.inference.presence.frame_scores`) and whether the frame labels the class. :func:`fit` turns
such rows (from one data set, or pooled over cross-validation folds, each fold's rows from its own held-out block)
into a card's ``presence`` block and a report: expected calibration error before and after, the reliability bins,
and the false-frame rate against recall at the thresholds. :func:`reliability_picture` draws the diagram.

Only the classes a data set labels are calibrated (a nerve-only set says nothing about vessels); a class needs frames
with and without it, so nerve-free frames must be in the data (a site's accepted empty frames, or windows cut where
nothing is labelled, :mod:`.negatives`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..inference import presence as pr


@dataclass
class Row:
    """One frame: its name, the raw presence score and the truth of each class it labels."""

    name: str
    scores: Dict[str, float]
    truth: Dict[str, bool]


def collect(segmenter, frames, classes: Sequence, progress: bool = False) -> List[Row]:
    """Segment every frame of ``frames`` (a FrameStore: ``frames[i].image``, ``.mask`` in the model's labels) and
    return one :class:`Row` each, for ``classes`` (the model's classes the data labels)."""
    iterator = range(len(frames))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"calibrate {segmenter.card.name}", unit="frame")
    rows = []
    for index in iterator:
        frame = frames[index]
        result = segmenter.segment(frame.image)
        scores = pr.frame_scores(result.probabilities, classes, getattr(result, "placement", None),
                                 result.instances)
        truth = {c.key: bool((frame.mask == c.label).any()) for c in classes}
        rows.append(Row(frame.name, scores, truth))
    return rows


def fit(rows: Sequence[Row], show: float = pr.DEFAULT_SHOW, uncertain: float = pr.DEFAULT_UNCERTAIN,
        fitted: Optional[Mapping[str, Any]] = None, previous: Optional[Mapping[str, Any]] = None):
    """(presence block, report) from ``rows``.

    Each class with frames with and without it gets a Platt fit; a class that lacks one side keeps ``previous``'s
    calibration (an earlier block) if it had one, else stays uncalibrated, and the report says so. ``report`` holds,
    per class: frames with / without, AUC, ECE of the raw score and of the calibrated presence, the reliability bins
    (calibrated), and the operating points at ``show`` and ``uncertain``.
    """
    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, which importing this
    # module must not.
    from .evaluate import presence as presence_summary

    keys = sorted({key for row in rows for key in row.truth})
    fits: Dict[str, pr.Calibration] = {}
    report: Dict[str, Any] = {"classes": {}, "show": show, "uncertain": uncertain, "frames": len(rows)}
    for key in keys:
        labelled = [row for row in rows if key in row.truth]
        raw = np.array([row.scores[key] for row in labelled], dtype=np.float64)
        truth = np.array([row.truth[key] for row in labelled], dtype=bool)
        entry: Dict[str, Any] = {"frames_with": int(truth.sum()), "frames_without": int((~truth).sum())}
        if truth.all() or not truth.any():
            old = ((previous or {}).get("calibration") or {}).get(key)
            entry["fitted"] = False
            entry["why"] = (f"{'every' if truth.all() else 'no'} frame labels it: calibration needs frames with and "
                            f"without; " + ("the earlier calibration is kept" if old else "left uncalibrated"))
            if old:
                fits[key] = pr.Calibration(float(old["a"]), float(old["b"]))
            report["classes"][key] = entry
            continue
        calibration = pr.fit_platt(raw, truth)
        fits[key] = calibration
        calibrated = np.array([calibration(s) for s in raw])
        entry.update({
            "fitted": True, "a": calibration.a, "b": calibration.b,
            "auc": presence_summary(truth, truth, raw)["auc"],
            "ece_raw": pr.expected_calibration_error(raw, truth)[0],
            "ece": pr.expected_calibration_error(calibrated, truth)[0],
            "bins": pr.expected_calibration_error(calibrated, truth)[1],
            "bins_raw": pr.expected_calibration_error(raw, truth)[1],
            "at_show": pr.operating_point(calibrated, truth, show),
            "at_uncertain": pr.operating_point(calibrated, truth, uncertain),
            "raw_at_half": pr.operating_point(raw, truth, 0.5),
        })
        report["classes"][key] = entry
    block = pr.presence_block(fits, show=show, uncertain=uncertain, fitted=fitted)
    return block, report


def reliability_picture(report: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Reliability diagram per class (observed rate against mean predicted presence, per bin, raw and calibrated,
    with frame counts), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fitted = [(key, entry) for key, entry in report["classes"].items() if entry.get("fitted")]
    fig, axes = plt.subplots(1, max(1, len(fitted)), figsize=(4.6 * max(1, len(fitted)), 4.4), squeeze=False)
    for axis, (key, entry) in zip(axes[0], fitted):
        axis.plot([0, 1], [0, 1], color="0.7", lw=1, label="perfectly calibrated")
        for bins, style, label in ((entry["bins_raw"], "s--", f"raw max probability (ECE {entry['ece_raw']:.3f})"),
                                   (entry["bins"], "o-", f"calibrated (ECE {entry['ece']:.3f})")):
            points = [(b["mean_predicted"], b["observed"], b["frames"]) for b in bins if b["frames"]]
            if points:
                x, y, n = zip(*points)
                axis.plot(x, y, style, label=label)
                if style == "o-":
                    for xi, yi, ni in points:
                        axis.annotate(str(ni), (xi, yi), textcoords="offset points", xytext=(3, -10), fontsize=7)
        axis.axvline(report["show"], color="green", lw=0.8, ls=":")
        axis.axvline(report["uncertain"], color="orange", lw=0.8, ls=":")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("predicted presence (bin mean)")
        axis.set_ylabel("frames that hold it (observed rate)")
        axis.set_title(f"{key}: {entry['frames_with']} frames with, {entry['frames_without']} without", fontsize=9)
        axis.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_lines(report: Mapping[str, Any]) -> List[str]:
    """A few lines for the terminal: per class, ECE before and after, and the operating points."""
    lines = []
    for key, entry in report["classes"].items():
        if not entry.get("fitted"):
            lines.append(f"{key}: not calibrated ({entry['why']})")
            continue
        show, low = entry["at_show"], entry["at_uncertain"]
        lines.append(f"{key}: {entry['frames_with']} frames with, {entry['frames_without']} without; AUC "
                     f"{entry['auc']:.3f}; ECE {entry['ece_raw']:.3f} raw -> {entry['ece']:.3f} calibrated; drawn at "
                     f">= {show['threshold']:.2f}: false-{key} frames {_pct(show['false_frame_rate'])}, recall "
                     f"{_pct(show['recall'])}; uncertain from {low['threshold']:.2f}: false {_pct(low['false_frame_rate'])}"
                     f", recall {_pct(low['recall'])}")
    return lines


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"
