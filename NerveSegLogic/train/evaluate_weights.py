"""Evaluating a model's weights (shipped or trained) on a data set folder, for ``nerveseg evaluate`` and the
benchmarks: which card goes with a weights file (:func:`card_for_weights`: the ``card.json`` a training run wrote
beside them, else the registered card), and scoring them end to end into metrics.json, report.md and overlays
(:func:`evaluate_data_set`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

log = logging.getLogger(__name__)


def card_for_weights(model: str, weights: Optional[Path], cards_dir: Optional[Path] = None):
    """(card, weights path, sha256) to evaluate ``model`` with.

    Without ``weights``: the registered card and its shipped weights. With ``weights``: a ``card.json`` beside them
    (as training writes it) gives the input size and sha256 they were trained with; without one, the registered
    card with no checksum (the caller vouches for the file).
    """
    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, numpy, which importing
    # this module must not.
    from ..models import registry
    from ..models.card import ModelCard

    card = registry.card(model, cards_dir)
    if weights is None:
        return card, None, None
    weights = Path(weights)
    beside = weights.parent / "card.json"
    if beside.is_file():
        trained = ModelCard.from_dict(json.loads(beside.read_text(encoding="utf-8")), None)
        if trained.name != card.name:
            raise ValueError(f"{beside} is the card of {trained.name!r}, not of {model!r}")
        sha256 = (trained.weights or {}).get("sha256") if (trained.weights or {}).get("file") == weights.name \
            else None
        return trained, weights, sha256
    return card, weights, None


def evaluate_data_set(model: str, data: Path, out: Path, weights: Optional[Path] = None, device: str = "cpu",
                      data_format: str = "auto", mapping: Optional[Mapping] = None,
                      limit_images: Optional[int] = None, pictures: int = 3, progress: bool = True,
                      command: str = "", cards_dir: Optional[Path] = None, threads: Optional[int] = None,
                      names: Optional[Sequence[str]] = None, negatives: float = 0.0,
                      tta: str = "none") -> Tuple[Dict, Dict[str, Path]]:
    """Evaluate ``model`` on the data set at ``data``; write metrics.json, report.md and overlays into ``out``.

    Frames are taken in name order: all of them, the first ``limit_images``, or those named in ``names``.
    ``negatives`` > 0 adds about that many windows per frame cut where nothing is labelled (:mod:`.negatives`), so
    the per-frame presence figures have frames without a nerve. ``tta`` ``flip`` segments each frame with flip
    test-time augmentation (:class:`~..inference.backends.FlipTTABackend`), recorded in the report's context.

    Returns (metrics summary, written paths). Scores the model's classes the data labels (``not_labelled`` lists
    the others). Raises ClassMismatchError when the data labels a class the model lacks or shares none with it
    (naming the mapping it expects), DatasetError for bad data, WeightsError for missing/corrupt weights.
    """
    from ..datasets.readers import open_dataset
    from ..inference.backends import apply_tta, check_tta, describe
    from ..inference.segmenter import Segmenter
    from ..models import registry
    from .data import FrameStore
    from .evaluate import evaluate, evaluation_classes, write_report
    from ..inference.backends import resolve_device

    card, weights_path, sha256 = card_for_weights(model, weights, cards_dir)
    check_tta(tta, card.task, card.name)  # before the data and weights are read
    dataset = open_dataset(data, format=data_format, mapping=mapping)
    # The data may label some of the model's classes (Kaggle: the nerve only): those are scored, the rest listed.
    translation, scored, _ = evaluation_classes(card.classes, dataset.classes, f"model {card.name}",
                                                f"the data set {data}", getattr(dataset, "_label_table", None))
    all_names = dataset.names()
    order = sorted(range(len(all_names)), key=lambda i: all_names[i])
    if names is not None:
        wanted = set(names)
        order = [i for i in order if all_names[i] in wanted]
    if limit_images is not None:
        order = order[:int(limit_images)]
    # each frame's labelled classes (a store mixes nerve-only and full versions); unknown mask values name the model's
    frames = FrameStore(dataset, translation, order, card.classes, f"model {card.name}")
    if negatives:
        from .negatives import negative_frames

        frames.frames.extend(negative_frames(frames.frames, seed=0, rate=float(negatives)))
    device = resolve_device(device)
    module = registry.load_from_card(card, device=device, weights_path=weights_path, sha256=sha256)
    segmenter = apply_tta(Segmenter.from_module(card, module, device=device, threads=threads), tta)
    evaluation = evaluate(segmenter, frames, progress=progress, scored=scored)
    context = {"data": str(data), "data_description": getattr(dataset, "description", ""),
               "weights": str(weights_path or card.weights_path),
               "weights_sha256": sha256 or (card.weights or {}).get("sha256"),
               "input_size": [card.input.height, card.input.width], "device": device, "command": command,
               "label_translation": translation, "negative_windows": len(frames) - len(order),
               "tta": tta, "backend": describe(segmenter.backend)}
    paths = write_report(evaluation, frames, out, card.classes, context, pictures=pictures)
    return evaluation.summary, paths
