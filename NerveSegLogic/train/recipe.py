"""What a training run takes from its card's recipe: the recipe with the options' overrides, the learning rate of
each epoch, the optimiser, and the card with the input size the run uses.

The recipe is the card's ``training.recipe`` (with ``--init``: the site recipe derived from it, :mod:`.site`); the
schedules and optimisers are those the cards name (constant, poly, step, cosine; adam, adamw, sgd).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Mapping

from ..imaging import placement as pp
from ..models.card import SCHEDULE_STEPS
from .site import site_recipe


def resolve_recipe(card, options) -> Dict[str, Any]:
    """The recipe this run uses: the card's ``training.recipe`` (with ``--init``: the site recipe derived from it,
    :func:`.site.site_recipe`) with the overrides of ``options`` (a :class:`.loop.TrainOptions`) applied."""
    if options.init:
        recipe = site_recipe(card.training["recipe"], options.site)
    else:
        recipe = copy.deepcopy(card.training["recipe"])
    if options.epochs is not None:
        recipe["epochs"] = int(options.epochs)
    if options.batch_size is not None:
        recipe["batch_size"] = int(options.batch_size)
    if options.lr is not None:
        recipe["optimizer"]["lr"] = float(options.lr)
    if options.augmentations is not None:
        recipe["augmentations"] = list(options.augmentations)
    for key in ("freeze_encoder", "freeze_norm"):
        value = getattr(options, key)
        if value is not None:
            recipe[key] = bool(value)
    recipe.setdefault("augmentations", [])
    recipe.setdefault("sampling", "uniform")
    return recipe


def learning_rate(recipe: Mapping[str, Any], epoch: float) -> float:
    """Learning rate for ``epoch`` (0-based): constant; poly ``lr (1 - epoch / epochs) ** power``; step ``lr *
    gamma ** (epoch // step_epochs)``; cosine ``lr (min_factor + (1 - min_factor) (1 + cos(pi epoch / epochs)) / 2)``
    (``min_factor`` default 0.01). ``epoch`` may be fractional (the share of the epoch already trained) for a
    schedule applied per iteration (:func:`per_iteration`)."""
    base = float(recipe["optimizer"]["lr"])
    schedule = recipe.get("schedule") or {"name": "constant"}
    name = schedule.get("name", "constant")
    if name == "constant":
        return base
    if name == "poly":
        return base * (1.0 - epoch / max(1, int(recipe["epochs"]))) ** float(schedule.get("power", 0.9))
    if name == "step":
        return base * float(schedule.get("gamma", 0.1)) ** (epoch // max(1, int(schedule.get("step_epochs", 10))))
    if name == "cosine":
        floor = float(schedule.get("min_factor", 0.01))
        phase = min(1.0, epoch / max(1, int(recipe["epochs"])))
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * phase)))
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected constant, poly, step or cosine")


def per_iteration(recipe: Mapping[str, Any]) -> bool:
    """Whether the schedule changes the learning rate at every optimiser step (``schedule.per: "iteration"``, as
    Wu et al. apply poly decay) rather than once per epoch (``"epoch"``, the default)."""
    per = (recipe.get("schedule") or {}).get("per", "epoch")
    if per not in SCHEDULE_STEPS:
        raise ValueError(f"recipe schedule.per is {per!r}; expected one of {SCHEDULE_STEPS}")
    return per == "iteration"


def make_optimizer(model, recipe: Mapping[str, Any]):
    import torch

    settings = recipe["optimizer"]
    lr = float(settings["lr"])
    weight_decay = float(settings.get("weight_decay") or 0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    if settings["name"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if settings["name"] == "adamw":  # decoupled weight decay (Loshchilov & Hutter)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if settings["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(settings.get("momentum") or 0.0),
                               weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {settings['name']!r}; expected adam, adamw or sgd")


def run_card(card, spec: pp.InputSpec):
    """The card with the input size actually used (what the live path must feed the trained model)."""
    if (spec.height, spec.width) == (card.input.height, card.input.width):
        return card
    data = card.to_json()
    data["input"] = dict(data["input"], size=[spec.height, spec.width])
    return type(card).from_dict(data, card.path)
