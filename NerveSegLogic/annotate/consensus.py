"""Several annotators, one answer: the latest accepted masks of different authors merged per class into a
``consensus`` version, and how each annotator compares with it.

Per frame, each author's label is their latest version with status accepted (a later "rejected" by the same author
withdraws it; consensus versions are never a source). Frames with accepted labels from two or more authors are
merged class by class (classes matched by key, so two masks that number them differently still merge):

- ``staple``: SimpleITK's STAPLE (Warfield et al., IEEE TMI 2004) on the authors' binary masks of the class; a pixel
  is in the class where STAPLE's probability is at least 0.5.
- ``majority``: a pixel is in the class where more than half of the authors drew it (with two authors: both).

Where two classes claim a pixel, the one with the higher probability (vote share) takes it. The result is saved as
a new accepted version of origin ``consensus`` on top of the frame's history, its sources (author and version of
each merged label, and the method) in its comment (:func:`consensus_sources`). A frame whose current version is
already the consensus of the same sources is left as it is. Frames with one author are listed and left alone.

Each annotator's sensitivity (their pixels of the class among the consensus's) and specificity (their background
among the consensus's background), pooled over the merged frames, are reported per class; STAPLE's own estimates
are kept per frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..store.database import AnnotationStore, ConflictError, VersionSummary
from ..classes import canonical_key

ORIGIN = "consensus"
METHODS = ("staple", "majority")
#: The comment of a consensus version: this, then the sources as JSON.
SOURCES_MARK = "; sources: "


@dataclass
class ConsensusFrame:
    frame_id: int
    version_id: Optional[int]  # None: left as it was (already the consensus of these sources)
    sources: List[Tuple[str, int]]  # (author, version id)
    classes: Dict[int, str]
    staple: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)  # class -> sensitivity/specificity


@dataclass
class ConsensusReport:
    method: str
    merged: List[ConsensusFrame] = field(default_factory=list)
    single_author: List[Tuple[int, str]] = field(default_factory=list)  # (frame id, its one author)
    conflicts: List[int] = field(default_factory=list)  # frames saved by someone else meanwhile (not merged)
    # author -> class -> {"tp", "fp", "tn", "fn", "frames"}
    counts: Dict[str, Dict[str, Dict[str, int]]] = field(default_factory=dict)

    def rater_scores(self) -> Dict[str, Dict[str, dict]]:
        """author -> class -> {"sensitivity", "specificity", "frames"} against the consensus, pooled over frames."""
        out: Dict[str, Dict[str, dict]] = {}
        for author, per_class in sorted(self.counts.items()):
            for key, c in sorted(per_class.items()):
                positives, negatives = c["tp"] + c["fn"], c["tn"] + c["fp"]
                out.setdefault(author, {})[key] = {
                    "sensitivity": None if positives == 0 else c["tp"] / positives,
                    "specificity": None if negatives == 0 else c["tn"] / negatives, "frames": c["frames"]}
        return out

    def as_dict(self) -> dict:
        return {"method": self.method,
                "merged": [{"frame_id": f.frame_id, "version_id": f.version_id,
                            "sources": [{"author": a, "version": v} for a, v in f.sources],
                            "staple_estimates": f.staple} for f in self.merged],
                "single_author": [{"frame_id": i, "author": a} for i, a in self.single_author],
                "conflicts": self.conflicts, "raters": self.rater_scores()}

    def table(self) -> str:
        saved = [f for f in self.merged if f.version_id is not None]
        lines = [f"{self.method} consensus: {len(saved)} frame(s) merged"
                 + (f", {len(self.merged) - len(saved)} already up to date" if len(saved) < len(self.merged) else "")]
        for f in saved:
            lines.append(f"  frame {f.frame_id}: version {f.version_id} from "
                         + ", ".join(f"{a} (v{v})" for a, v in f.sources))
        if self.single_author:
            lines.append(f"{len(self.single_author)} frame(s) with one author, left alone: "
                         + ", ".join(f"{i} ({a})" for i, a in self.single_author))
        if self.conflicts:
            lines.append("saved by someone else meanwhile, not merged: " + ", ".join(map(str, self.conflicts)))
        scores = self.rater_scores()
        if scores:
            lines.append("annotator vs consensus (pooled over the merged frames):")
            lines.append(f"  {'author':<16} {'class':<14} {'sensitivity':>11} {'specificity':>11} {'frames':>6}")
            for author, per_class in scores.items():
                for key, s in per_class.items():
                    lines.append(f"  {author:<16} {key:<14} {_fmt(s['sensitivity']):>11} "
                                 f"{_fmt(s['specificity']):>11} {s['frames']:>6}")
        return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _key(key: str) -> str:
    try:
        return canonical_key(key)
    except ValueError:
        return key


def accepted_by_author(history: Sequence[VersionSummary]) -> Dict[str, VersionSummary]:
    """Each author's latest accepted version of one frame (history oldest first); consensus versions never count,
    and a later rejection by the same author withdraws theirs."""
    out: Dict[str, Optional[VersionSummary]] = {}
    for v in history:
        if v.origin == ORIGIN:
            continue
        if v.status == "accepted":
            out[v.author] = v
        elif v.status == "rejected" and v.author in out:
            out[v.author] = None
    return {author: v for author, v in out.items() if v is not None}


def consensus_sources(version) -> Optional[dict]:
    """{"method": ..., "sources": [{"author", "version"}, ...]} of a consensus version (from its comment), else
    None."""
    if getattr(version, "origin", None) != ORIGIN or SOURCES_MARK not in (version.comment or ""):
        return None
    return json.loads(version.comment.split(SOURCES_MARK, 1)[1])


def merge(masks: Sequence[np.ndarray], classes: Sequence[Dict[int, str]], method: str = "staple"
          ) -> Tuple[np.ndarray, Dict[int, str], Dict[str, Dict[str, List[float]]]]:
    """Merge labelmaps (each with its {label: key}) into one: ``(labelmap, {label: key}, STAPLE's estimates)``
    (see the module docstring). Labels follow the first mask's numbering, then free values."""
    if method not in METHODS:
        raise ValueError(f"consensus method {method!r} unknown; expected one of {', '.join(METHODS)}")
    if len(masks) < 2 or len(masks) != len(classes):
        raise ValueError("a consensus needs at least two masks, each with its classes")
    shape = masks[0].shape
    if any(m.shape != shape for m in masks):
        raise ValueError(f"the masks differ in size: {[m.shape for m in masks]}")
    keys: List[str] = []
    names: Dict[str, str] = {}
    for mapping in classes:
        for label, key in sorted(mapping.items()):
            canonical = _key(key)
            if canonical not in keys:
                keys.append(canonical)
                names[canonical] = key
    scores, estimates = [], {}
    for canonical in keys:
        binary = [np.isin(m, [label for label, key in c.items() if _key(key) == canonical])
                  for m, c in zip(masks, classes)]
        if not any(b.any() for b in binary):
            scores.append(np.zeros(shape, np.float32))
            continue
        if method == "majority":
            scores.append(np.mean(binary, axis=0).astype(np.float32))
        else:
            probability, sensitivity, specificity = _staple(binary)
            scores.append(probability)
            estimates[names[canonical]] = {"sensitivity": sensitivity, "specificity": specificity}
    stacked = np.stack(scores)
    best = np.argmax(stacked, axis=0)
    chosen = np.take_along_axis(stacked, best[None], 0)[0]
    inside = chosen > 0.5 if method == "majority" else chosen >= 0.5
    labels: Dict[str, int] = {}
    first = {_key(k): int(label) for label, k in classes[0].items()}
    used = set(first.values())
    for canonical in keys:
        if canonical in first:
            labels[canonical] = first[canonical]
        else:
            value = next(v for v in range(1, 256) if v not in used)
            used.add(value)
            labels[canonical] = value
    out = np.zeros(shape, np.uint8)
    present = {}
    for index, canonical in enumerate(keys):
        pixels = inside & (best == index)
        if pixels.any():
            out[pixels] = labels[canonical]
            present[labels[canonical]] = names[canonical]
    return out, present, estimates


def _staple(binary: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[float], List[float]]:
    import SimpleITK as sitk

    images = [sitk.GetImageFromArray(b.astype(np.uint8)) for b in binary]
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    probability = sitk.GetArrayFromImage(staple.Execute(images)).astype(np.float32)
    return (probability, [round(float(v), 4) for v in staple.GetSensitivity()],
            [round(float(v), 4) for v in staple.GetSpecificity()])


def consensus(store: AnnotationStore, author: str, method: str = "staple",
              frame_ids: Optional[Iterable[int]] = None) -> ConsensusReport:
    """Merge every frame (or ``frame_ids``) labelled by two or more authors (see the module docstring); returns
    what was merged, the frames with one author, and each annotator's counts against the consensus."""
    if method not in METHODS:
        raise ValueError(f"consensus method {method!r} unknown; expected one of {', '.join(METHODS)}")
    history: Dict[int, List[VersionSummary]] = {}
    for v in store.summaries():
        history.setdefault(v.frame_id, []).append(v)
    wanted = None if frame_ids is None else {int(i) for i in frame_ids}
    report = ConsensusReport(method)
    for frame_id in sorted(history):
        if wanted is not None and frame_id not in wanted:
            continue
        versions = history[frame_id]
        labels = accepted_by_author(versions)
        if len(labels) < 2:
            if labels:
                report.single_author.append((frame_id, next(iter(labels))))
            continue
        sources = sorted((a, v.id) for a, v in labels.items())
        record = {"method": method, "sources": [{"author": a, "version": i} for a, i in sources]}
        head = versions[-1]
        masks = {a: store.mask(v.mask_sha256) for a, v in labels.items()}
        merged, merged_classes, estimates = merge([masks[a] for a, _ in sources],
                                                  [labels[a].classes for a, _ in sources], method)
        done = head.origin == ORIGIN and _same_sources(store, head, record)
        version_id = None
        if not done:
            text = (f"{method} consensus of " + ", ".join(f"{a} (v{i})" for a, i in sources)
                    + SOURCES_MARK + json.dumps(record, sort_keys=True))
            try:
                saved = store.save_mask(frame_id, merged, merged_classes or dict(labels[sources[0][0]].classes),
                                        author, ORIGIN, head.id, status="accepted", comment=text)
            except ConflictError:
                report.conflicts.append(frame_id)
                continue
            version_id = saved.id
        else:
            merged = store.mask(head.mask_sha256)
            merged_classes = dict(head.classes)
        report.merged.append(ConsensusFrame(frame_id, version_id, sources, dict(merged_classes), estimates))
        _count(report, merged, merged_classes, masks, {a: v.classes for a, v in labels.items()})
    return report


def _same_sources(store: AnnotationStore, head: VersionSummary, record: dict) -> bool:
    try:
        return consensus_sources(head) == record
    except ValueError:  # a comment that is not ours
        return False


def _count(report: ConsensusReport, merged: np.ndarray, merged_classes: Dict[int, str],
           masks: Dict[str, np.ndarray], classes: Dict[str, Dict[int, str]]) -> None:
    keys = {_key(k): k for k in merged_classes.values()}
    for mapping in classes.values():
        for k in mapping.values():
            keys.setdefault(_key(k), k)
    for canonical, name in keys.items():
        truth = np.isin(merged, [label for label, k in merged_classes.items() if _key(k) == canonical])
        for author, mask in masks.items():
            drawn = np.isin(mask, [label for label, k in classes[author].items() if _key(k) == canonical])
            c = report.counts.setdefault(author, {}).setdefault(name, {"tp": 0, "fp": 0, "tn": 0, "fn": 0,
                                                                       "frames": 0})
            c["tp"] += int((drawn & truth).sum())
            c["fp"] += int((drawn & ~truth).sum())
            c["fn"] += int((~drawn & truth).sum())
            c["tn"] += int((~drawn & ~truth).sum())
            c["frames"] += 1
