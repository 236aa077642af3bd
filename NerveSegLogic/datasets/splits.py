"""Splits that do not leak: contiguous blocks of frames (training's cross-validation) and whole subjects (export).

Neighbouring frames come from the same scan and look alike, so a random split by frame puts near-copies of test
frames into training. Folds here are contiguous blocks of the name-sorted items; export splits keep every subject
(or, where no subject is known, every recording) in exactly one split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple


def block_splits(n_items: int, n_folds: int) -> List[List[int]]:
    """``n_folds`` contiguous blocks covering ``0..n_items-1`` in order, sizes differing by at most one.

    Raises ValueError unless ``1 <= n_folds <= n_items``."""
    if n_folds < 1 or n_folds > n_items:
        raise ValueError(f"need 1 <= n_folds <= n_items, got n_folds={n_folds}, n_items={n_items}")
    base, extra = divmod(n_items, n_folds)
    blocks, start = [], 0
    for fold in range(n_folds):
        size = base + (1 if fold < extra else 0)
        blocks.append(list(range(start, start + size)))
        start += size
    return blocks


def contiguous_folds(names: Sequence[str], k: int) -> List[Tuple[List[int], List[int]]]:
    """``k`` folds of ``(train indices, test indices)`` into ``names``: each test part is one contiguous block of
    the items sorted by name (indices refer to the original order). Every item is tested exactly once."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    folds = []
    for block in block_splits(len(names), k):
        test = sorted(order[i] for i in block)
        held = set(test)
        folds.append(([i for i in range(len(names)) if i not in held], test))
    return folds


SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> Dict[str, float]:
    """``"70,15,15"`` -> ``{"train": 0.7, "val": 0.15, "test": 0.15}`` (1 to 3 non-negative numbers, any scale).

    Raises ValueError naming the problem."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip() != ""]
    except ValueError:
        raise ValueError(f"--split {text!r}: expected 1 to 3 numbers like 70,15,15") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--split {text!r}: expected 1 to 3 non-negative numbers with a positive sum, like 70,15,15")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    return {name: v / total for name, v in zip(SPLITS, values)}


def split_by_subject(subjects: Sequence[Hashable], fractions: Mapping[str, float], seed: int = 0,
                     strata: Optional[Sequence[Optional[str]]] = None) -> List[str]:
    """The split name of each item, so that all items of one subject share a split.

    subjects: one subject key per item. fractions: target share of ITEMS per split (see :func:`parse_fractions`).
    strata: per item, e.g. the block region; a subject is stratified by its most common value, and each stratum's
    subjects are spread over the splits separately, so each split gets its share of every region.
    The result depends only on the inputs and ``seed`` (subjects are sorted before the seeded shuffle). Within a
    stratum subjects are taken in shuffled order and each goes to the split furthest below its target."""
    frames_of: Dict[Hashable, int] = Counter(subjects)
    stratum_of: Dict[Hashable, str] = {}
    if strata is not None:
        votes: Dict[Hashable, Counter] = defaultdict(Counter)
        for subject, stratum in zip(subjects, strata):
            votes[subject][stratum if stratum is not None else ""] += 1
        stratum_of = {s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in votes.items()}
    groups: Dict[str, List[Hashable]] = defaultdict(list)
    for subject in sorted(frames_of, key=lambda s: (str(type(s)), str(s))):
        groups[stratum_of.get(subject, "")].append(subject)
    rng = random.Random(seed)
    names = [n for n in SPLITS if fractions.get(n, 0) > 0]
    split_of: Dict[Hashable, str] = {}
    for stratum in sorted(groups):
        members = groups[stratum]
        rng.shuffle(members)
        total = sum(frames_of[s] for s in members)
        assigned = {n: 0 for n in names}
        for subject in members:
            # the split with the largest shortfall against its target; ties go to the earlier split
            best = max(names, key=lambda n: (fractions[n] * total - assigned[n], -names.index(n)))
            split_of[subject] = best
            assigned[best] += frames_of[subject]
    return [split_of[s] for s in subjects]


def check_subjects_disjoint(subjects: Sequence[Hashable], splits: Sequence[str]) -> None:
    """Raise ValueError naming a subject that appears in more than one split."""
    seen: Dict[Hashable, str] = {}
    for subject, split in zip(subjects, splits):
        if seen.setdefault(subject, split) != split:
            raise ValueError(f"subject {subject!r} appears in both the {seen[subject]!r} and {split!r} splits")
