"""Knowledge distillation: trained teachers' class probabilities as soft targets for the model being trained.

Issue 12 asks for a real-time default distilled from the best model or an ensemble. ``nerveseg train --teacher
[MODEL@]WEIGHTS`` (repeatable) loads each teacher once, runs them in eval mode on every training batch *after* its
augmentation (so the soft targets follow the flips, warps and gamma the student sees) and mixes two terms:

    loss = (1 - weight) * recipe_loss(student, labels) + weight * T^2 * KL(teachers || student, at temperature T)

The teachers' probabilities are averaged over teachers (an ensemble teacher). T^2 keeps the gradient's scale of
the soft term independent of T (Hinton et al., 2015). The KL term is averaged over pixels; it is written here
because MONAI and torch have no per-pixel distillation loss (torch's ``kl_div`` does the arithmetic).

A teacher must segment the student's classes (same labels and keys) from the same input (size, channels,
normalisation); anything else is refused with a message naming the teacher. Teachers cost one forward pass each per
step; on the CPU a run with two teachers takes about 1.5x as long.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from ..checksums import sha256_file
from ..imaging import placement as pp
from ..models import registry
from ..models.card import ModelCard


@dataclass
class Teacher:
    """A loaded teacher: the model in eval mode, and where its weights came from (for the card and for resume)."""

    model_name: str
    weights: Path
    sha256: str
    module: torch.nn.Module

    def record(self) -> Dict[str, Any]:
        return {"model": self.model_name, "weights": str(self.weights), "sha256": self.sha256}


def parse_teacher(text: str, student_model: str):
    """``[MODEL@]WEIGHTS`` -> (model name, weights path). WEIGHTS is a .safetensors file or a training run's folder
    (its ``<MODEL>.safetensors``); without MODEL the model is the one the run's ``card.json`` names, else
    ``student_model``."""
    model, path, _ = resolve_weights(text, student_model)
    return model, path


def read_run_card(path: Path):
    """A training run's ``card.json`` (named card.json, not after its model, so read without the name check)."""
    import json

    try:
        return ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable model card ({error})") from None


def resolve_weights(text: str, default_model: str, cards_dir=None):
    """``[MODEL@]WEIGHTS`` -> (model name, weights path, card): the one resolution of trained weights that
    ``--teacher`` and ``--init`` share.

    WEIGHTS is a .safetensors file or a training run's folder (its ``card.json`` and ``<MODEL>.safetensors``, as
    ``nerveseg train`` writes them). The card is the run's ``card.json`` beside the weights when there is one (the
    input size and build the weights were trained with), else the registered card of MODEL. MODEL defaults to the
    model that ``card.json`` names, else ``default_model``. Raises ValueError naming ``text`` when a part is
    missing, or the run's card belongs to another model than the MODEL given."""
    model, at, rest = text.partition("@")
    if not at:
        model, rest = "", text
    if not rest or (at and not model):
        raise ValueError(f"{text!r}: expected [MODEL@]WEIGHTS (a .safetensors file or a run folder)")
    path = Path(rest)
    folder = path if path.is_dir() else path.parent
    run_card_path = folder / "card.json"  # a training run's own card: the input size and build it trained with
    run_card = read_run_card(run_card_path) if run_card_path.is_file() else None
    if not model:
        model = run_card.name if run_card is not None else default_model
    if path.is_dir():
        named = (run_card.weights or {}).get("file") if run_card is not None and run_card.name == model else None
        path = path / (named or f"{model}.safetensors")
    if not path.is_file():
        raise ValueError(f"{text!r}: no weights file {path}")
    card = run_card if run_card is not None else registry.card(model, cards_dir)
    if card.name != model:
        raise ValueError(f"{text!r}: {run_card_path} is the card of {card.name}, not of {model}")
    return model, path, card


def load_teachers(texts: Sequence[str], student_card, spec: pp.InputSpec, device: str,
                  cards_dir=None) -> List[Teacher]:
    """Load every teacher named in ``texts`` (see :func:`resolve_weights`) and check it fits the student.

    A ``card.json`` next to the weights (a training run's folder) is the teacher's card, with the input size and
    build it was trained with; otherwise the registered card of its model is."""
    teachers = []
    for text in texts:
        try:
            model_name, path, card = resolve_weights(text, student_card.name, cards_dir)
        except ValueError as error:
            raise ValueError(f"teacher {error}") from None
        if card.task != "semantic":
            raise ValueError(f"teacher {text!r}: model {model_name} is a {card.task} model; teachers must be "
                             "semantic models (one probability per class and pixel)")
        theirs = [(c.label, c.key) for c in card.classes]
        ours = [(c.label, c.key) for c in student_card.classes]
        if theirs != ours:
            raise ValueError(f"teacher {text!r}: its classes {theirs} are not the student's "
                             f"{student_card.name} classes {ours}")
        their_input = (card.input.height, card.input.width, card.input.channels, card.input.resize,
                       card.input.normalize)
        our_input = (spec.height, spec.width, spec.channels, spec.resize, spec.normalize)
        if their_input != our_input:
            raise ValueError(f"teacher {text!r}: its input (height, width, channels, resize, normalize) "
                             f"{their_input} differs from the student's {our_input}")
        digest = sha256_file(path)
        module = registry.load_from_card(card, device=device, weights_path=path, sha256=digest)
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        teachers.append(Teacher(model_name, path, digest, module.eval()))
    return teachers


def teacher_probabilities(teachers: Sequence[Teacher], x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over ``teachers`` of softmax(logits / temperature): (B, K, H, W), no gradient."""
    with torch.no_grad():
        total = None
        for teacher in teachers:
            teacher.module.eval()
            probabilities = torch.softmax(teacher.module(x) / temperature, dim=1)
            total = probabilities if total is None else total + probabilities
        return total / len(teachers)


def distillation_loss(student_logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(soft_targets || softmax(student_logits / T)), summed over classes, averaged over pixels."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    per_pixel = F.kl_div(log_student, soft_targets, reduction="none").sum(dim=1)
    return per_pixel.mean() * temperature ** 2
