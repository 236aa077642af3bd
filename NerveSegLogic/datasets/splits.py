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

    subjects: one subject key per item. fractions: target share of SUBJECTS per split (see :func:`parse_fractions`);
    the number of subjects per split is rounded by largest remainder, so 6 subjects at 70,15,15 give 4, 1, 1.
    strata: per item, e.g. the block region; a subject counts in its most common stratum, and subjects are handed
    out stratum by stratum in turn, each to the split (with room left) that is furthest below its share of that
    stratum, so each split gets its share of every region as far as the counts allow.
    The result depends only on the inputs and ``seed`` (subjects are sorted before the seeded shuffle)."""
    names = [n for n in SPLITS if fractions.get(n, 0) > 0]
    if not names:
        raise ValueError(f"split fractions {dict(fractions)} give no split a positive share")
    stratum_of: Dict[Hashable, str] = {}
    unique = sorted(set(subjects), key=lambda s: (str(type(s)), str(s)))
    if strata is not None:
        votes: Dict[Hashable, Counter] = defaultdict(Counter)
        for subject, stratum in zip(subjects, strata):
            votes[subject][stratum if stratum is not None else ""] += 1
        stratum_of = {s: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for s, c in votes.items()}
    rng = random.Random(seed)
    rng.shuffle(unique)

    # subjects per split: largest remainder of fraction x number of subjects
    total = sum(fractions[n] for n in names)
    exact = {n: fractions[n] / total * len(unique) for n in names}
    room = {n: int(exact[n]) for n in names}
    for n in sorted(names, key=lambda n: (-(exact[n] - room[n]), names.index(n)))[:len(unique) - sum(room.values())]:
        room[n] += 1

    # hand subjects out one stratum at a time, in turn, so small strata spread over the splits too
    queues: Dict[str, List[Hashable]] = defaultdict(list)
    for subject in unique:
        queues[stratum_of.get(subject, "")].append(subject)
    size = {k: len(v) for k, v in queues.items()}
    given: Dict[str, Counter] = defaultdict(Counter)
    split_of: Dict[Hashable, str] = {}
    turn = sorted(queues)
    rng.shuffle(turn)  # which region goes first varies with the seed, like everything else
    while any(queues.values()):
        for stratum in turn:
            if not queues[stratum]:
                continue
            subject = queues[stratum].pop(0)
            open_splits = [n for n in names if room[n] > 0]
            best = max(open_splits, key=lambda n: (round(fractions[n] / total * size[stratum]
                                                         - given[stratum][n], 9), room[n], -names.index(n)))
            split_of[subject] = best
            given[stratum][best] += 1
            room[best] -= 1
    return [split_of[s] for s in subjects]


def check_subjects_disjoint(subjects: Sequence[Hashable], splits: Sequence[str]) -> None:
    """Raise ValueError naming a subject that appears in more than one split."""
    seen: Dict[Hashable, str] = {}
    for subject, split in zip(subjects, splits):
        if seen.setdefault(subject, split) != split:
            raise ValueError(f"subject {subject!r} appears in both the {seen[subject]!r} and {split!r} splits")
