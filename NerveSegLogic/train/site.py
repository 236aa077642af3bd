"""Learning a new site: fine-tuning from a trained model (``nerveseg train --init``) with the site recipe.

- :data:`SITE_RECIPE`: the one place the fine-tuning schedule lives. :func:`site_recipe` derives a run's recipe
  from the model card's (the paper's) recipe: a short schedule, a lower learning rate, the same loss, optimiser,
  augmentations and sampling, no ImageNet encoder (the init replaces it), and the freezing options. Its values are
  to be chosen by measurement (``benchmarks/accuracy/adaptation.md``); the run's card records the values it used
  (``training.recipe.site``).
- :func:`resolve_init`: ``--init NAME|WEIGHTS|RUN_DIR``: a registered model's own weights (sha256 from its card),
  a .safetensors file, or a training run's folder (resolved as ``--teacher`` is, :func:`.distill.resolve_weights`),
  refused when its architecture, build, classes or input channels differ from the model being trained.
- :data:`ENCODERS`: which submodule is "the encoder" of each architecture (``--freeze-encoder``);
  :func:`freeze_encoder` and :func:`freeze_norm` (batch-norm layers kept in eval mode, their affine parameters not
  trained).
- :func:`data_fingerprint`: what the card records to identify the training data.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..checksums import sha256_file
from ..models import registry
from ..models.weights import WeightsError, apply_weights

#: The site recipe: how ``--init`` changes the card's recipe. ``epochs`` is absolute (with k = 20 frames and the
#: cards' batch sizes of 4-8, 15 epochs are 45-75 steps); ``lr_factor`` multiplies the card's learning rate;
#: ``schedule`` replaces the card's; ``augmentations`` / ``batch_size`` None keep the card's (the batch is clamped
#: to the number of training frames); ``freeze_encoder`` / ``freeze_norm`` are the defaults of the flags.
#: ``lr_factor`` 0.03 was chosen on usgra-seg blocks 0 and 1 (benchmarks/accuracy/adaptation.md): at 0.1 fine-tuning with
#: 10 or 20 frames lowered the held-out nerve Dice of both blocks; at 0.03 it did not.
SITE_RECIPE: Dict[str, Any] = {
    "epochs": 15,
    "lr_factor": 0.03,
    "schedule": {"name": "cosine", "min_factor": 0.01},
    "augmentations": None,
    "batch_size": None,
    "freeze_encoder": False,
    "freeze_norm": True,
}

#: Architecture -> the attribute of the built model that is its encoder (the contracting path that
#: ``--freeze-encoder`` freezes). An architecture missing here has no separable encoder (MONAI's UNet nests its
#: levels), and ``--freeze-encoder`` is refused for it.
ENCODERS: Dict[str, str] = {
    "efficientnet_unet": "encoder",  # EfficientNet-Lite (ImageNet-pretrained in the cards' recipe)
    "ragcm": "encoder",  # ResNet-34
    "smistad_unet": "encoder",  # the down levels (ModuleList)
    "sa_unet": "encoder",  # the down levels (ModuleList)
    "bpmsegnet": "backbone",  # VGG-19 / ResNet backbone
}


def site_recipe(base: Mapping[str, Any], site: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The fine-tuning recipe derived from the card's recipe ``base`` by ``site`` (default :data:`SITE_RECIPE`).

    Keeps the card's loss, optimiser (with its learning rate times ``lr_factor``), augmentations, sampling,
    negatives and batch size unless ``site`` sets them; takes ``epochs`` and ``schedule`` from ``site``; drops
    ``pretrained`` (the init weights replace ImageNet ones); records ``site`` under ``recipe["site"]``."""
    site = dict(SITE_RECIPE if site is None else site)
    recipe = copy.deepcopy(dict(base))
    recipe.pop("pretrained", None)
    recipe["epochs"] = int(site["epochs"])
    recipe["optimizer"] = dict(recipe["optimizer"], lr=float(recipe["optimizer"]["lr"]) * float(site["lr_factor"]))
    if site.get("schedule") is not None:
        recipe["schedule"] = copy.deepcopy(site["schedule"])
    if site.get("augmentations") is not None:
        recipe["augmentations"] = list(site["augmentations"])
    if site.get("batch_size") is not None:
        recipe["batch_size"] = int(site["batch_size"])
    recipe["freeze_encoder"] = bool(site.get("freeze_encoder", False))
    recipe["freeze_norm"] = bool(site.get("freeze_norm", False))
    recipe["site"] = copy.deepcopy(site)
    return recipe


# ---------------------------------------------------------------------------------------------------- freezing
def encoder_of(model, architecture: str):
    """The encoder submodule of ``model`` (see :data:`ENCODERS`); ValueError for an architecture without one."""
    attribute = ENCODERS.get(architecture)
    module = getattr(model, attribute, None) if attribute else None
    if module is None:
        raise ValueError(f"--freeze-encoder: architecture {architecture!r} has no separable encoder (those that "
                         f"do: {', '.join(sorted(ENCODERS))}); train it with --no-freeze-encoder")
    return module


def freeze_encoder(model, architecture: str) -> int:
    """Stop training the encoder's parameters; returns how many tensors were frozen."""
    parameters = list(encoder_of(model, architecture).parameters())
    for parameter in parameters:
        parameter.requires_grad_(False)
    return len(parameters)


def norm_layers(model) -> List:
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def freeze_norm(model) -> int:
    """Batch-norm layers: their affine parameters are not trained (their running statistics stay the init's while
    :func:`keep_norm_frozen` keeps them in eval mode). Returns the number of layers."""
    layers = norm_layers(model)
    for layer in layers:
        for parameter in layer.parameters(recurse=False):
            parameter.requires_grad_(False)
    return len(layers)


def keep_norm_frozen(model) -> None:
    """Put every batch-norm layer in eval mode (call after ``model.train()``): they normalise with the init's
    statistics and do not update them."""
    for layer in norm_layers(model):
        layer.eval()


# ---------------------------------------------------------------------------------------------------- init
@dataclass
class InitSource:
    """Where a fine-tune starts: the weights file, their sha256, the card they belong to and how they were named."""

    text: str  # what the user gave to --init
    kind: str  # "registered model", "weights file" or "run folder"
    model: str  # the base model's name
    weights: Path
    sha256: str
    card: Any  # ModelCard of the weights (a run's card.json, or the registered card)

    def record(self) -> Dict[str, Any]:
        return {"model": self.model, "sha256": self.sha256, "source": self.kind, "path": str(self.weights),
                "given": self.text, "architecture": self.card.architecture,
                "classes": {str(c.label): c.key for c in self.card.classes},
                "input_size": [self.card.input.height, self.card.input.width]}


def resolve_init(text: str, model_card, build_overrides: Optional[Mapping[str, Any]] = None,
                 cards_dir=None) -> InitSource:
    """``--init`` -> :class:`InitSource`, checked against ``model_card`` (the model being trained).

    A registered model's name gives its card's weights (sha256-checked against its card when loaded); an existing
    path is ``[MODEL@]WEIGHTS`` (a .safetensors file, or a run folder with its card.json), resolved as ``--teacher``
    is. Raises ValueError naming both sides when architecture, build, classes or input channels differ, and
    WeightsError when a registered model's weights are not on this machine."""
    from .distill import resolve_weights  # lazy on purpose: distill imports torch, site's callers may not need it

    model_part, at, rest = text.partition("@")
    path_part = rest if at else text
    if not at and not Path(path_part).exists() and _is_registered(text, cards_dir):
        card = registry.card(text, cards_dir)
        source = InitSource(text, "registered model", card.name, card.weights_path or Path(),
                            (card.weights or {}).get("sha256", ""), card)
        check_init_fits(source, model_card, build_overrides)  # before asking for weights that could not fit
        if card.weights_path is None:
            raise WeightsError(f"--init {text}: model {text!r} ships no weights (its card {card.path} has "
                               "\"weights\": null); start from a run folder or a .safetensors file instead")
        if not card.weights_path.is_file():
            raise WeightsError(f"--init {text}: {registry.missing_weights_message(card)}")
        return source
    else:
        if not Path(path_part).exists():
            names = ", ".join(registry.names(cards_dir, tasks=None))
            raise ValueError(f"--init {text}: neither a registered model ({names}) nor an existing .safetensors "
                             "file or training run folder")
        try:
            name, path, card = resolve_weights(text, model_card.name, cards_dir)
        except ValueError as error:
            raise ValueError(f"--init {error}") from None
        run_card = path.parent / "card.json"
        listed = (card.weights or {}) if run_card.is_file() else {}
        digest = listed.get("sha256") if listed.get("file") == path.name else None
        kind = "run folder" if run_card.is_file() else "weights file"
        source = InitSource(text, kind, name, path, digest or sha256_file(path), card)
    check_init_fits(source, model_card, build_overrides)
    return source


def _is_registered(name: str, cards_dir) -> bool:

    try:
        return name in registry.names(cards_dir, tasks=None)
    except FileNotFoundError:
        return False


def check_init_fits(source: InitSource, model_card, build_overrides: Optional[Mapping[str, Any]] = None) -> None:
    """ValueError naming both models when the init's architecture, build, classes or input channels are not the
    trained model's (then its weights cannot be this model's starting point)."""
    theirs, ours = source.card, model_card
    where = f"--init {source.text} ({source.kind} {source.model}, {source.weights})"
    if theirs.task != ours.task or theirs.architecture != ours.architecture:
        raise ValueError(f"{where} is a {theirs.task} model of architecture {theirs.architecture!r}; "
                         f"{ours.name} is a {ours.task} model of architecture {ours.architecture!r}: its weights "
                         f"cannot start {ours.name}. Pick --model {theirs.name}, or an init of {ours.name}.")
    their_classes = {c.label: c.key for c in theirs.classes}
    our_classes = {c.label: c.key for c in ours.classes}
    if their_classes != our_classes:
        raise ValueError(f"{where} segments {_mapping(their_classes)} but {ours.name} segments "
                         f"{_mapping(our_classes)} (label value: class): its output layer does not fit.")
    if theirs.input.channels != ours.input.channels:
        raise ValueError(f"{where} takes {theirs.input.channels} input channel(s) but {ours.name} takes "
                         f"{ours.input.channels}.")
    our_build = dict(ours.build, **dict(build_overrides or {}))
    if dict(theirs.build) != our_build:
        raise ValueError(f"{where} was built with {theirs.build} but {ours.name} builds {our_build}: the layers "
                         "differ.")


def _mapping(classes: Mapping[int, str]) -> str:
    return "{" + ", ".join(f"{label}: {key}" for label, key in sorted(classes.items())) + "}"


def load_init(model, source: InitSource, device: str = "cpu") -> None:
    """Copy the init's weights into ``model``: loaded by the registry from its own card (safetensors, sha256
    checked), then applied with the same key and shape check (a mismatch names the file)."""

    loaded = registry.load_from_card(source.card, device="cpu", weights_path=source.weights, sha256=source.sha256)
    apply_weights(model, loaded.state_dict(), source.weights)


# ---------------------------------------------------------------------------------------------------- data
def data_fingerprint(dataset, indices: Sequence[int], frames: Sequence = ()) -> Dict[str, Any]:
    """What identifies the frames a run used: the data set's own fingerprint when it has one (an annotation store:
    the file's sha256 and the version ids), else a manifest-like sha256 over the sorted (name, image file sha256,
    mask file sha256) of the items ``indices`` (file bytes when the reader names two files per item, else the
    pixels of ``frames``, the frames as read)."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint(indices)
    rows, method = [], "files"
    cache: Dict[str, str] = {}

    def digest(path: str) -> str:
        if path not in cache:
            cache[path] = sha256_file(Path(path))
        return cache[path]

    refs = [dataset.ref(i) for i in indices] if hasattr(dataset, "ref") else None
    if refs is not None and all(len(r.files) >= 2 and all(Path(f).is_file() for f in r.files) for r in refs):
        rows = [(r.name, digest(r.files[0]), digest(r.files[-1])) for r in refs]
    else:
        method = "pixels"
        rows = [(f.name, _pixels(f.image), _pixels(f.mask)) for f in frames]
    text = "\n".join(f"{name}\t{image}\t{mask}" for name, image, mask in sorted(rows))
    return {"kind": f"{getattr(dataset, 'format', 'data set')} data set", "root": str(getattr(dataset, "root", "")),
            "method": f"sha256 over the sorted (name, image sha256, mask sha256) of the frames used ({method})",
            "frames": len(rows), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _pixels(array) -> str:
    import numpy as np

    a = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{a.dtype.str}:{'x'.join(str(s) for s in a.shape)}:".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


__all__ = ["SITE_RECIPE", "ENCODERS", "site_recipe", "encoder_of", "freeze_encoder", "freeze_norm",
           "keep_norm_frozen", "InitSource", "resolve_init", "check_init_fits", "load_init", "data_fingerprint"]
