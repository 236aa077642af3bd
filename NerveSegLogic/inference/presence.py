"""How sure the model is that a structure is in the frame: a calibrated per-frame presence, and its thresholds.

Pixel probabilities say where a structure would be, not whether the frame holds one: on another scanner a model
paints a nerve into most frames that have none. So each class gets one number per frame, its *presence*:

- the raw score is the class's highest probability in the part of the model input the frame fills (how well it ranks
  frames with a nerve above frames without on usgra-seg's held-out blocks: benchmarks/accuracy/presence.md);
- a model card's ``presence`` block maps it to a calibrated probability with Platt scaling on its logit,
  ``p = sigmoid(a * logit(score) + b)``, fitted on held-out frames (cross-validation blocks with nerve-free windows,
  or a site's own corrected frames with ``nerveseg calibrate``);
- the block's thresholds say what the live view does with it: ``show`` and above the structure is drawn; between
  ``uncertain`` and ``show`` it is drawn as uncertain (outline only); below ``uncertain`` it is not drawn.

A card without a ``presence`` block reports the raw score and draws as before (no thresholds).
The block's fields are checked when the card is read (:func:`NerveSegLogic.models.card.presence_problems`).

The card block::

    "presence": {
      "score": "max_probability",
      "calibration": {"nerve": {"a": 1.3, "b": -0.4}, "blood_vessel": {"a": ..., "b": ...}},
      "thresholds": {"nerve": {"show": 0.5, "uncertain": 0.2}, "blood_vessel": {...}},
      "fitted": {"data": "...", "frames": 380, "ece": {...}, "command": "...", "date": "..."}
    }

Nothing here imports torch; fitting uses scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..models.card import presence_problems

#: Raw scores are clipped to [EPS, 1 - EPS] before the logit: a softmax in float32 (or INT8) saturates at 1.
EPS = 1e-6


@dataclass(frozen=True)
class Thresholds:
    """``show``: drawn at and above; ``uncertain``: drawn as uncertain at and above (and below ``show``)."""

    show: float
    uncertain: float

    def state(self, presence: float) -> str:
        """``shown``, ``uncertain`` or ``hidden`` for a calibrated presence."""
        if presence >= self.show:
            return "shown"
        if presence >= self.uncertain:
            return "uncertain"
        return "hidden"


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of one class: ``sigmoid(a * logit(score) + b)``; a=1, b=0 is the raw score."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, score: float) -> float:
        clipped = min(max(float(score), EPS), 1.0 - EPS)
        z = self.a * math.log(clipped / (1.0 - clipped)) + self.b
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class PresenceModel:
    """A card's presence block: per class key, a calibration and (optionally) thresholds."""

    calibrations: Mapping[str, Calibration]
    thresholds: Mapping[str, Thresholds]

    @classmethod
    def from_card(cls, card) -> "PresenceModel":
        """From ``card.raw["presence"]``; identity calibration and no thresholds when the card has none."""
        block = (getattr(card, "raw", None) or {}).get("presence") or {}
        return cls.from_block(block, where=str(getattr(card, "path", None) or getattr(card, "name", "card")))

    @classmethod
    def from_block(cls, block: Mapping[str, Any], where: str = "presence block") -> "PresenceModel":
        problems = presence_problems(block)
        if problems:
            raise ValueError(f"{where}: field 'presence': " + "; ".join(problems))
        calibrations = {key: Calibration(float(v["a"]), float(v["b"]))
                        for key, v in (block.get("calibration") or {}).items()}
        thresholds = {key: Thresholds(float(v["show"]), float(v["uncertain"]))
                      for key, v in (block.get("thresholds") or {}).items()}
        return cls(calibrations, thresholds)

    @property
    def calibrated(self) -> bool:
        return bool(self.calibrations)

    def presence(self, scores: Mapping[str, float]) -> Dict[str, float]:
        """Calibrated presence per class key (the raw score where the class has no calibration)."""
        return {key: (self.calibrations[key](score) if key in self.calibrations else float(score))
                for key, score in scores.items()}

    def states(self, presence: Mapping[str, float]) -> Dict[str, str]:
        """``shown`` / ``uncertain`` / ``hidden`` per class; ``shown`` for a class without thresholds."""
        return {key: (self.thresholds[key].state(p) if key in self.thresholds else "shown")
                for key, p in presence.items()}


# ------------------------------------------------------------------------------------------------------ scores
def frame_scores(probabilities: Optional[np.ndarray], classes: Sequence, placement=None,
                 instances: Optional[Sequence] = None) -> Dict[str, float]:
    """{class key: raw score}: the class's highest probability inside the part of the model input the frame fills
    (``placement.valid_h`` x ``valid_w``; the padding below and beside it is not the frame), or for an instance model
    its best instance's score; 0 when there is neither."""
    out = {}
    for cls in classes:
        score = 0.0
        if probabilities is not None:
            channel = probabilities[cls.label]
            if placement is not None:
                channel = channel[:placement.valid_h, :placement.valid_w]
            score = float(channel.max()) if channel.size else 0.0
        elif instances is not None:
            score = max((float(i.score) for i in instances if int(i.label) == cls.label), default=0.0)
        out[cls.key] = score
    return out


# ------------------------------------------------------------------------------------------------------ fitting
def logit(scores: Sequence[float]) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(clipped / (1.0 - clipped))


def fit_platt(scores: Sequence[float], truth: Sequence[bool], prior_strength: float = 1.0) -> Calibration:
    """Platt scaling fitted by maximum likelihood on held-out frames: the (a, b) of ``sigmoid(a logit(s) + b)``.

    Targets are Platt's smoothed ones, (n+ + 1) / (n+ + 2) and 1 / (n- + 2), which keep a perfectly separable set
    (common here: a handful of frames per class) from driving ``a`` to infinity; ``prior_strength`` scales that
    smoothing. Needs frames with and without the class: ValueError otherwise (naming the counts).
    """
    from scipy.optimize import minimize

    x = logit(scores)
    y = np.asarray(truth, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"calibration needs frames with and without the structure; got {positives} with and "
                         f"{negatives} without")
    target = np.where(y, (positives + prior_strength) / (positives + 2 * prior_strength),
                      prior_strength / (negatives + 2 * prior_strength))

    def loss(params):
        z = params[0] * x + params[1]
        # log(1 + exp(z)) - target * z, written stably
        value = np.logaddexp(0.0, z) - target * z
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        gradient = np.array([np.sum((p - target) * x), np.sum(p - target)])
        return float(value.sum()), gradient

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in result.x)
    return Calibration(a, b)


def expected_calibration_error(probabilities: Sequence[float], truth: Sequence[bool], bins: int = 10
                               ) -> Tuple[float, list]:
    """(ECE, bins): the frame-weighted mean |observed rate - mean predicted| over ``bins`` equal-width bins of the
    predicted presence; each bin as {lo, hi, frames, mean_predicted, observed}."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    rows, error = [], 0.0
    for k in range(bins):
        inside = index == k
        n = int(inside.sum())
        row = {"lo": float(edges[k]), "hi": float(edges[k + 1]), "frames": n,
               "mean_predicted": float(p[inside].mean()) if n else None,
               "observed": float(y[inside].mean()) if n else None}
        if n:
            error += n / max(1, p.size) * abs(row["observed"] - row["mean_predicted"])
        rows.append(row)
    return float(error), rows


def operating_point(probabilities: Sequence[float], truth: Sequence[bool], threshold: float) -> Dict[str, float]:
    """At ``threshold`` on the calibrated presence: the false frame rate (frames without the class it would draw)
    and the recall (frames with it it would draw)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    drawn = p >= threshold
    return {"threshold": float(threshold),
            "false_frame_rate": float((drawn & ~y).sum() / max(1, (~y).sum())) if (~y).any() else math.nan,
            "recall": float((drawn & y).sum() / max(1, y.sum())) if y.any() else math.nan,
            "frames_with": int(y.sum()), "frames_without": int((~y).sum())}


#: Default operating points, on a calibrated presence: drawn when more likely there than not; drawn as uncertain
#: down to one chance in five. A site may refit its thresholds (``nerveseg calibrate``) on its own frames.
DEFAULT_SHOW = 0.5
DEFAULT_UNCERTAIN = 0.2


def presence_block(fits: Mapping[str, Calibration], show: float = DEFAULT_SHOW, uncertain: float = DEFAULT_UNCERTAIN,
                   fitted: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A card's ``presence`` block from fitted calibrations (same thresholds for every class)."""
    return {"score": "max_probability",
            "calibration": {key: {"a": round(c.a, 6), "b": round(c.b, 6)} for key, c in fits.items()},
            "thresholds": {key: {"show": show, "uncertain": uncertain} for key in fits},
            "fitted": dict(fitted or {})}
