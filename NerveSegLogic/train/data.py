"""Training and evaluation data: the class check against a model card, block splits, frames held in memory, batches.

A data set is read once (:class:`FrameStore`, grey uint8 frames and label masks in their own size); every training
step then augments the frames at their own size and preprocesses them exactly as the live path does
(:func:`NerveSegLogic.imaging.placement.preprocess` for the image, ``place_mask`` for the mask).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..classes import SegmentClass
from ..imaging import placement as pp
from ..datasets.dataset import DatasetError
from ..datasets.splits import contiguous_folds
from ..datasets.splits import block_splits

log = logging.getLogger(__name__)

#: Instance targets ignore components smaller than this many pixels of the model input (too small for a box).
MIN_INSTANCE_AREA_INPUT_PX = 16


class ClassMismatchError(ValueError):
    """The data's classes are not the model's; the message gives the mapping the model expects."""


def _describe(mapping: Mapping[int, str]) -> str:
    return "{" + ", ".join(f"{label}: {key}" for label, key in sorted(mapping.items())) + "}"


def label_translation(model_classes: Sequence[SegmentClass], data_classes: Sequence[SegmentClass],
                      model_name: str = "the model", data_name: str = "the data") -> Optional[Dict[int, int]]:
    """How the data's label values become the model's: None when they are already the same, else {data: model}.

    The same classes under other label values are translated. Data that labels only some of the model's classes
    (a nerve-only set) is accepted: :func:`labelled_classes` says which, and training leaves the others out of the
    loss. A class the model lacks, or data sharing no class with the model, raises :class:`ClassMismatchError`
    naming both mappings and the ``--map`` that would make them agree.
    """
    model = {c.key: c.label for c in model_classes}
    data = {c.key: c.label for c in data_classes}
    if model == data:
        return None
    if data and set(data) <= set(model):
        translation = {data[key]: model[key] for key in data}
        return None if all(a == b for a, b in translation.items()) else translation
    expected = _describe({label: key for key, label in model.items()})
    found = _describe({label: key for key, label in data.items()})
    example = ",".join(f"{label}={key}" for key, label in sorted(model.items(), key=lambda kv: kv[1]))
    raise ClassMismatchError(
        f"{model_name} segments {expected} (label value: class) but {data_name} has {found}: "
        f"missing {sorted(set(model) - set(data)) or 'nothing'}, extra {sorted(set(data) - set(model)) or 'nothing'}. "
        f"Give the data's label values the model's classes with --map (for example --map {example}), "
        f"or pick a model trained on these classes.")


def labelled_classes(model_classes: Sequence[SegmentClass], keys) -> Optional[FrozenSet[int]]:
    """The model's label values of the class ``keys`` a frame labels; None when it labels every model class."""
    model = {c.key: c.label for c in model_classes}
    labels = frozenset(model[key] for key in keys if key in model)
    return None if labels == frozenset(model.values()) else labels


def translate_mask(mask: np.ndarray, translation: Optional[Mapping[int, int]]) -> np.ndarray:
    """``mask`` with its label values replaced by ``translation`` (unlisted values kept)."""
    if not translation:
        return mask
    table = np.arange(256, dtype=np.uint8)
    for source, target in translation.items():
        table[int(source)] = int(target)
    return table[mask]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A grey frame as uint8 (uint16 and float frames scaled like preprocess's ``unit`` normalisation)."""
    grey = pp.to_grey(image)
    if grey.dtype == np.uint8:
        return grey
    return np.clip(np.rint(pp.normalize(grey, "unit") * 255.0), 0, 255).astype(np.uint8)


def block_folds(names: Sequence[str], folds: int) -> List[List[int]]:
    """Indices of ``folds`` contiguous blocks of the items sorted by name (neighbouring frames come from the same
    scan, so a fold never takes random frames). Raises ValueError for fewer items than folds."""
    return [list(test) for _, test in contiguous_folds(list(names), folds)]


def split_indices(names: Sequence[str], folds: int, fold: Optional[int],
                  groups: Optional[Sequence[str]] = None) -> Tuple[List[int], List[int]]:
    """(train, validation) indices: validation is block ``fold`` (default: the last) of ``folds`` contiguous
    blocks; ``fold=None`` with ``folds <= 1`` means no validation (train on everything).

    groups: the recording each item comes from (an annotation store's frame source), with ``names`` sorting the
    items of one recording in acquisition order. Then the held-out block is block ``fold`` of each recording (a
    recording of n < folds frames gives frame i to block i * folds // n), so every recording is held out at the
    same place and no block mixes neighbouring frames into training."""
    if folds <= 1:
        return list(range(len(names))), []
    index = folds - 1 if fold is None else int(fold)
    if not 0 <= index < folds:
        raise ValueError(f"--fold must be 0..{folds - 1} for {folds} folds, got {fold}")
    if groups is None or len(set(groups)) <= 1:
        blocks = block_folds(names, folds)
        validation = sorted(blocks[index])
    else:
        members: Dict[str, List[int]] = {}
        for item, group in enumerate(groups):
            members.setdefault(group, []).append(item)
        validation = []
        for group in sorted(members):
            items = sorted(members[group], key=lambda i: names[i])
            n = len(items)
            if n >= folds:
                validation.extend(items[i] for i in block_splits(n, folds)[index])
            else:
                validation.extend(item for position, item in enumerate(items) if position * folds // n == index)
        validation.sort()
    chosen = set(validation)
    return [i for i in range(len(names)) if i not in chosen], validation


@dataclass
class Frame:
    """One frame held for training: grey uint8 image and label mask (model labels) in the frame's own size.

    labelled: the model's label values this frame labels, None when it labels every class. Pixels of a class it
    does not label are 0 in ``mask`` and mean "unknown", not background (training leaves that class out of the
    loss for this frame)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: Optional[Tuple[float, float]] = None
    labelled: Optional[FrozenSet[int]] = None


class FrameStore:
    """The frames of a data set, read once and kept in memory, masks translated to the model's labels.

    model_classes: the model's classes; given, each frame's labelled classes are recorded (a sample's
    ``metadata["labelled"]``, the class keys its annotation labels, else every class of the data set), and a mask
    value that maps to none of the model's classes is an error naming the values and the model's classes."""

    def __init__(self, dataset, translation: Optional[Mapping[int, int]] = None,
                 indices: Optional[Sequence[int]] = None, model_classes: Optional[Sequence[SegmentClass]] = None,
                 model_name: str = "the model"):
        chosen = range(len(dataset)) if indices is None else indices
        self.frames: List[Frame] = []
        data_keys = [c.key for c in getattr(dataset, "classes", ())]
        allowed = None if model_classes is None else np.array([0] + [c.label for c in model_classes])
        for index in chosen:
            sample = self._read(dataset, index, model_classes, model_name)
            mask = translate_mask(sample.mask, translation)
            labelled = None
            if model_classes is not None:
                keys = sample.metadata.get("labelled") if isinstance(sample.metadata, dict) else None
                labelled = labelled_classes(model_classes, data_keys if keys is None else keys)
                unknown = np.setdiff1d(np.unique(mask), allowed)
                if unknown.size:
                    inverse = {int(t): int(s) for s, t in (translation or {}).items()}
                    values = sorted(inverse.get(int(v), int(v)) for v in unknown)
                    raise ClassMismatchError(
                        f"frame {sample.name}: label value(s) {values} in its mask map to none of {model_name}'s "
                        f"classes {_describe({c.label: c.key for c in model_classes})}; map them with --map "
                        f"(VALUE=CLASS, or VALUE=background)")
            self.frames.append(Frame(name=sample.name, image=to_uint8(sample.image), mask=mask,
                                     spacing=sample.spacing, labelled=labelled))

    @staticmethod
    def _read(dataset, index, model_classes, model_name):
        if model_classes is None:
            return dataset[index]
        try:
            return dataset[index]
        except DatasetError as error:
            if "unknown label value" not in str(error):
                raise
            raise DatasetError(f"{error}. {model_name} segments "
                               f"{_describe({c.label: c.key for c in model_classes})}") from None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[index]

    @property
    def partial(self) -> bool:
        """Whether some frame labels only some of the model's classes."""
        return any(frame.labelled is not None for frame in self.frames)


def has_foreground(frame: Frame) -> bool:
    return bool(frame.mask.any())


def epoch_order(store: FrameStore, indices: Sequence[int], seed: int, epoch: int, sampling: str) -> List[int]:
    """The order frames are visited in one epoch, reproducible from (seed, epoch).

    ``uniform``: a random permutation. ``balanced`` (RAGCM's 1:1 positive/negative batches): frames with and without
    foreground alternate, the smaller group drawn again as needed; when one group is empty this is ``uniform``.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 17])
    indices = list(indices)
    if sampling == "balanced":
        positive = [i for i in indices if has_foreground(store[i])]
        negative = [i for i in indices if not has_foreground(store[i])]
        if positive and negative:
            half = len(indices) // 2 + len(indices) % 2
            pos = list(rng.permutation(positive)) if len(positive) >= half else list(rng.choice(positive, half))
            neg = list(rng.permutation(negative)) if len(negative) >= half else list(rng.choice(negative, half))
            order = [int(v) for pair in zip(pos[:half], neg[:half]) for v in pair]
            return order[:len(indices)]
    elif sampling != "uniform":
        raise ValueError(f"sampling must be 'uniform' or 'balanced', got {sampling!r}")
    return [int(v) for v in rng.permutation(indices)]


def shard_batch(batch_length: int, per_rank: int, rank: int) -> Tuple[int, int]:
    """The positions ``[lo, hi)`` of a global batch of ``batch_length`` frames that process ``rank`` trains on, when
    each process takes ``per_rank`` frames of a full batch: process r takes ``r * per_rank .. (r + 1) * per_rank``.
    A short last batch of an epoch fills the processes in rank order, so a late rank may get none (it still takes
    part in the step, with an empty shard)."""
    lo = min(batch_length, rank * per_rank)
    return lo, min(batch_length, lo + per_rank)


class ShardedEpoch:
    """The distributed sampler of a training run on several processes: the trainer's own :func:`epoch_order`
    (a function of seed and epoch, so every process derives the same order without talking to the others), cut into
    global batches of ``global_batch`` frames, of which process ``rank`` takes its slice (:func:`shard_batch`).

    Over the processes the slices of a batch are the single-process batch, position for position, so each frame
    keeps the position it has in a single-process epoch and with it its augmentation (:func:`augmentation_rng` of
    seed, epoch and position): a frame is augmented the same whichever process trains on it. Raises ValueError when
    ``world_size`` does not divide ``global_batch``."""

    def __init__(self, store: "FrameStore", indices: Sequence[int], seed: int, sampling: str, global_batch: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch < 1 or world_size < 1 or global_batch % world_size:
            raise ValueError(f"a global batch of {global_batch} frames does not divide among {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.store, self.indices, self.seed, self.sampling = store, list(indices), int(seed), sampling
        self.global_batch, self.rank, self.world_size = int(global_batch), int(rank), int(world_size)
        self.per_rank = self.global_batch // self.world_size

    def order(self, epoch: int) -> List[int]:
        """The epoch's order over every process (the single-process order)."""
        return epoch_order(self.store, self.indices, self.seed, epoch, self.sampling)

    def shard(self, batch_length: int, rank: Optional[int] = None) -> Tuple[int, int]:
        """``[lo, hi)`` of a global batch of ``batch_length`` frames for ``rank`` (default: this process)."""
        return shard_batch(batch_length, self.per_rank, self.rank if rank is None else rank)

    def shard_sizes(self, batch_length: int) -> List[int]:
        """How many frames of a global batch each process takes, in rank order."""
        return [hi - lo for lo, hi in (self.shard(batch_length, r) for r in range(self.world_size))]

    def batches(self, epoch: int, start: int = 0):
        """``(position, global batch, lo, hi)`` for the batches of ``epoch`` from position ``start`` on: the global
        batch is ``order[position:position + global_batch]`` and this process trains on ``batch[lo:hi]``, whose
        first frame is at position ``position + lo`` of the epoch."""
        order = self.order(epoch)
        for position in range(int(start), len(order), self.global_batch):
            batch = order[position:position + self.global_batch]
            lo, hi = self.shard(len(batch))
            yield position, batch, lo, hi

    def positions(self, epoch: int) -> List[int]:
        """The epoch positions this process trains on (the union over ranks is ``range(len(order))``)."""
        return [position + offset for position, _, lo, hi in self.batches(epoch) for offset in range(lo, hi)]

    def __iter__(self):
        """This process's frame indices for the epoch set by :meth:`set_epoch` (a torch Sampler's interface)."""
        return iter([index for _, batch, lo, hi in self.batches(getattr(self, "epoch", 0)) for index in batch[lo:hi]])

    def __len__(self) -> int:
        return len(self.positions(getattr(self, "epoch", 0)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def augmentation_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator for one frame's augmentation: a function of (seed, epoch, position in the epoch) only, so a
    resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([int(seed), int(epoch), int(position)])


def prepare(frame: Frame, spec: pp.InputSpec, augmenter=None,
            rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Model input (C, H, W) float32 and target (H, W) int64 labels for one frame, augmented when asked."""
    image, mask = frame.image, frame.mask
    if augmenter is not None:
        image, mask = augmenter(image, mask, rng if rng is not None else np.random.default_rng())
    tensor, _ = pp.preprocess(image, spec)
    target = pp.place_mask(mask, spec).astype(np.int64)
    return tensor, target


def instance_targets(target: np.ndarray, labels: Sequence[int],
                     min_area: int = MIN_INSTANCE_AREA_INPUT_PX) -> Dict[str, np.ndarray]:
    """Mask R-CNN targets from a label map in input size: one instance per 8-connected component of each label
    (components under ``min_area`` pixels skipped), ``boxes`` (N, 4) float32 xyxy in pixels (x1, y1 exclusive: the
    box encloses the component's pixels), ``labels`` (N,) int64, ``masks`` (N, H, W) uint8."""
    import cv2

    boxes, classes, masks = [], [], []
    for label in labels:
        count, components, stats, _ = cv2.connectedComponentsWithStats((target == label).astype(np.uint8),
                                                                         connectivity=8)
        for index in range(1, count):
            x, y, w, h, area = stats[index]
            if area < min_area:
                continue
            boxes.append([x, y, x + w, y + h])
            classes.append(label)
            masks.append((components == index).astype(np.uint8))
    height, width = target.shape
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(classes, dtype=np.int64),
            "masks": np.asarray(masks, dtype=np.uint8).reshape(-1, height, width)}
