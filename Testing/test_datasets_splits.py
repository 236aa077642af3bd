"""Splits: contiguous blocks for cross-validation, whole subjects (stratified, seeded) for export."""

from collections import Counter

import pytest

from NerveSegLogic.datasets.splits import (block_splits, check_subjects_disjoint, contiguous_folds, parse_fractions,
                                           split_by_subject)


def test_block_splits_are_contiguous_cover_everything_and_differ_by_at_most_one():
    blocks = block_splits(10, 3)
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ValueError, match="n_folds"):
        block_splits(2, 3)


def test_contiguous_folds_test_blocks_are_neighbouring_names_each_tested_once():
    names = ["0007", "0001", "0003", "0002", "0005", "0004", "0006", "0000", "0008"]
    folds = contiguous_folds(names, 3)
    tested = []
    for train, test in folds:
        assert sorted(train + test) == list(range(len(names)))
        tested_names = sorted(names[i] for i in test)
        numbers = [int(n) for n in tested_names]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # one contiguous block of names
        tested += test
    assert sorted(tested) == list(range(len(names)))


def test_parse_fractions_normalises_and_rejects_nonsense():
    assert parse_fractions("70,15,15") == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15})
    assert parse_fractions("8,2") == pytest.approx({"train": 0.8, "val": 0.2, "test": 0.0})
    for bad in ("a,b", "1,2,3,4", "-1,2", "0,0"):
        with pytest.raises(ValueError, match="--split"):
            parse_fractions(bad)


def _cohort():
    subjects, regions = [], []
    for s in range(30):
        region = ("femoral", "axillary", "interscalene")[s % 3]
        for _ in range(2 + s % 4):
            subjects.append(f"subject-{s:02d}")
            regions.append(region)
    return subjects, regions


def test_subject_split_keeps_each_subject_in_one_split_and_is_reproducible_from_the_seed():
    subjects, regions = _cohort()
    fractions = parse_fractions("70,15,15")
    first = split_by_subject(subjects, fractions, seed=3, strata=regions)
    assert first == split_by_subject(subjects, fractions, seed=3, strata=regions)
    assert first != split_by_subject(subjects, fractions, seed=4, strata=regions)
    check_subjects_disjoint(subjects, first)
    counts = Counter(first)
    assert set(counts) == {"train", "val", "test"}
    assert 0.6 < counts["train"] / len(first) < 0.8


def test_subject_split_is_stratified_every_region_in_every_split():
    subjects, regions = _cohort()
    splits = split_by_subject(subjects, parse_fractions("60,20,20"), seed=0, strata=regions)
    for split in ("train", "val", "test"):
        assert {r for r, s in zip(regions, splits) if s == split} == {"femoral", "axillary", "interscalene"}


def test_subject_disjointness_check_names_the_leaking_subject():
    with pytest.raises(ValueError, match=r"subject 'b' appears in both the 'train' and 'test' splits"):
        check_subjects_disjoint(["a", "b", "b"], ["train", "train", "test"])
