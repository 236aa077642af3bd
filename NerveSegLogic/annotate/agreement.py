"""Agreement between annotators on frames labelled twice: Dice per class per frame, mean per class, a table.

An annotator's label of a frame is their latest version that is their own drawing or decision: origin "manual" or
"corrected", or any version they set to "accepted" (accepting a mask makes it theirs); a later "rejected" by them
withdraws it. Classes are compared by class key, so two versions that number the classes differently still match.
Dice = 2|A∩B| / (|A| + |B|); a class neither annotator drew on a frame is left out of that frame (not counted as 1).

Within one store the annotators work on one history per frame, so the second sees the first's mask: that measures
how much the second changed, not independent agreement. For an independent study give each annotator their own
store over the same frames and compare the two stores (:func:`agreement_between_stores`; frames matched by the
sha256 of their pixels).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..classes import canonical_key
from ..imaging import overlap
from ..store.database import AnnotationStore, VersionSummary

LABEL_ORIGINS = ("manual", "corrected")


@dataclass
class FrameAgreement:
    frame_id: int
    raters: Tuple[str, str]
    version_ids: Tuple[int, int]
    dice: Dict[str, Optional[float]]  # class key -> Dice (None: neither drew the class)


@dataclass
class AgreementReport:
    frames: List[FrameAgreement] = field(default_factory=list)

    def per_class(self) -> Dict[str, dict]:
        """class key -> {"mean": mean Dice, "min": lowest, "frames": how many frames had the class}."""
        values: Dict[str, List[float]] = {}
        for f in self.frames:
            for key, d in f.dice.items():
                if d is not None:
                    values.setdefault(key, []).append(d)
        return {key: {"mean": float(np.mean(v)), "min": float(np.min(v)), "frames": len(v)}
                for key, v in sorted(values.items())}

    def as_dict(self) -> dict:
        return {"frames_compared": len(self.frames), "per_class": self.per_class(),
                "frames": [{"frame_id": f.frame_id, "raters": list(f.raters), "version_ids": list(f.version_ids),
                            "dice": f.dice} for f in self.frames]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self) -> str:
        """Per-frame Dice per class, then the mean per class, as aligned text."""
        classes = sorted({k for f in self.frames for k in f.dice})
        if not self.frames:
            return "no frame is labelled by two annotators"
        head = ["frame", "raters"] + classes
        rows = [[str(f.frame_id), " vs ".join(f.raters)] + [_fmt(f.dice.get(c)) for c in classes]
                for f in self.frames]
        summary = self.per_class()
        rows.append(["mean", f"{len(self.frames)} frames"] + [_fmt(summary.get(c, {}).get("mean")) for c in classes])
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def class_dice(mask_a: np.ndarray, classes_a: Dict[int, str], mask_b: np.ndarray,
               classes_b: Dict[int, str]) -> Dict[str, Optional[float]]:
    """Dice per class key between two labelmaps with their own {label: key} mappings (None: class in neither)."""
    def keyed(classes):
        out = {}
        for label, key in classes.items():
            try:
                out.setdefault(canonical_key(key), []).append(label)
            except ValueError:
                out.setdefault(key, []).append(label)
        return out

    ka, kb = keyed(classes_a), keyed(classes_b)
    result: Dict[str, Optional[float]] = {}
    for key in sorted(set(ka) | set(kb)):
        a = np.isin(mask_a, ka.get(key, []))
        b = np.isin(mask_b, kb.get(key, []))
        score = overlap.dice(a, b)
        result[key] = None if math.isnan(score) else score  # in neither (overlap's NaN): left out of this frame
    return result


def labels_by_author(history: List[VersionSummary]) -> Dict[str, VersionSummary]:
    """Each author's current label of one frame (see the module docstring), from its history oldest first."""
    out: Dict[str, Optional[VersionSummary]] = {}
    for v in history:
        if v.status == "rejected":
            out[v.author] = None
        elif v.origin in LABEL_ORIGINS or v.status == "accepted":
            out[v.author] = v
    return {a: v for a, v in out.items() if v is not None}


def agreement(store: AnnotationStore) -> AgreementReport:
    """Dice per class for every pair of annotators on every frame both labelled, within one store."""
    by_frame: Dict[int, List[VersionSummary]] = {}
    for v in store.summaries():
        by_frame.setdefault(v.frame_id, []).append(v)
    report = AgreementReport()
    for frame_id, history in sorted(by_frame.items()):
        labels = labels_by_author(history)
        for (ra, va), (rb, vb) in itertools.combinations(sorted(labels.items()), 2):
            dice = class_dice(store.mask(va.mask_sha256), va.classes, store.mask(vb.mask_sha256), vb.classes)
            report.frames.append(FrameAgreement(frame_id, (ra, rb), (va.id, vb.id), dice))
    return report


def agreement_between_stores(store_a: AnnotationStore, store_b: AnnotationStore) -> AgreementReport:
    """Dice per class between two stores' labels of the same frames (matched by pixel sha256). In each store a
    frame's label is the latest labelling version (any author); frame ids are those of ``store_a``; raters are
    named ``author@store file name``."""
    def latest_labels(store):
        out = {}
        per_frame: Dict[int, List[VersionSummary]] = {}
        for v in store.summaries():
            per_frame.setdefault(v.frame_id, []).append(v)
        for frame_id, history in per_frame.items():
            labels = labels_by_author(history)
            if labels:
                out[store.frame(frame_id).sha256] = (frame_id, max(labels.values(), key=lambda v: v.id))
        return out

    a, b = latest_labels(store_a), latest_labels(store_b)
    report = AgreementReport()
    for sha in sorted(set(a) & set(b), key=lambda s: a[s][0]):
        (fa, va), (_, vb) = a[sha], b[sha]
        dice = class_dice(store_a.mask(va.mask_sha256), va.classes, store_b.mask(vb.mask_sha256), vb.classes)
        raters = (f"{va.author}@{store_a.path.name}", f"{vb.author}@{store_b.path.name}")
        report.frames.append(FrameAgreement(fa, raters, (va.id, vb.id), dice))
    return report
