"""Model cards: what a registered model is, as data (``Resources/Models/<name>.json``).

A card says which architecture builds the model and with which arguments, which paper it follows, which classes
it segments (label values 1..N), how a frame becomes its input, where its weights are and their sha256, how it is
trained, and what was measured (metrics, speed). :class:`ModelCard` is the validated, immutable form; every bad
field raises ``ValueError`` naming the card file and the field.

Nothing here imports torch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from NerveSegLogic.classes import SegmentClass, segment_class
from ..imaging.placement import InputSpec

from .int8 import INT8_RECIPES
from .user_models import SITE_CARD_FILE, fetched_weights_path

TASKS = ("semantic", "instance", "promptable")
#: a promptable model (box / click -> one mask, for annotators) outputs mask logits for the prompted structure
OUTPUT_FOR_TASK = {"semantic": "probabilities", "instance": "instances", "promptable": "mask_logits"}
WEIGHT_DTYPES = ("float32", "float16")
LOSSES = ("dice", "dice_ce", "bce_dice_l2", "maskrcnn")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "poly", "step", "cosine")
#: When a schedule changes the learning rate (``training.recipe.schedule.per``; "epoch" when absent).
SCHEDULE_STEPS = ("epoch", "iteration")
SAMPLINGS = ("balanced", "uniform")
DEFAULT_INTENDED_USE = "Research use only, not for clinical decisions."
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9+\-]*$")

REQUIRED_FIELDS = ("name", "architecture", "task", "summary", "paper", "classes", "input", "build", "output",
                   "training")


@dataclass(frozen=True)
class ModelCard:
    """A validated model card. Build one with :func:`load_card` or :meth:`from_dict`; never mutate ``raw``.

    ``num_classes`` counts the background: a card with classes labelled 1..N has ``num_classes == N + 1`` and the
    model's output channel c is label value c.
    """

    name: str
    architecture: str
    task: str
    summary: str
    paper: Dict[str, Any]
    classes: Tuple[SegmentClass, ...]
    num_classes: int
    input: InputSpec
    build: Dict[str, Any]
    output: str
    weights: Optional[Dict[str, Any]]
    training: Dict[str, Any]
    metrics: Dict[str, Any]
    speed: Dict[str, Any]
    default: bool
    intended_use: str
    notes: Tuple[str, ...]
    path: Optional[Path] = field(default=None, compare=False)
    raw: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ----------------------------------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Optional[Path] = None) -> "ModelCard":
        """Validate ``data`` (a parsed card) and build the card; ValueError names ``path`` and the bad field."""
        where = str(path) if path is not None else "<model card>"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: a model card must be a JSON object, got {type(data).__name__}")
        raw = copy.deepcopy(dict(data))

        def fail(field_name: str, problem: str) -> ValueError:
            return ValueError(f"{where}: field {field_name!r}: {problem}")

        for name in REQUIRED_FIELDS:
            if name not in raw:
                raise fail(name, "missing (required fields: " + ", ".join(REQUIRED_FIELDS) + ")")

        name = raw["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail("name", f"expected lower-case letters, digits, '-' or '+', got {name!r}")
        if path is not None and card_file_name(Path(path)) != name:
            raise fail("name", f"{name!r} must equal the file name stem {card_file_name(Path(path))!r} (a site "
                               f"model's card.json: its folder's name)")
        architecture = raw["architecture"]
        if not isinstance(architecture, str) or not architecture:
            raise fail("architecture", f"expected a non-empty string, got {architecture!r}")
        task = raw["task"]
        if task not in TASKS:
            raise fail("task", f"expected one of {TASKS}, got {task!r}")
        output = raw["output"]
        if output != OUTPUT_FOR_TASK[task]:
            raise fail("output", f"a {task} model outputs {OUTPUT_FOR_TASK[task]!r}, got {output!r}")
        summary = raw["summary"]
        if not isinstance(summary, str) or not summary.strip():
            raise fail("summary", "expected a non-empty string")

        paper = raw["paper"]
        if not isinstance(paper, dict):
            raise fail("paper", "expected an object with title, authors, venue, year, doi or url")
        for key in ("title", "authors", "venue", "year"):
            if key not in paper:
                raise fail(f"paper.{key}", "missing")
        if not (paper.get("doi") or paper.get("url")):
            raise fail("paper", "needs a 'doi' or a 'url'")

        classes = _parse_classes(raw["classes"], fail)
        num_classes = len(classes) + 1
        try:
            spec = InputSpec.from_card(raw["input"]) if isinstance(raw["input"], Mapping) else None
        except (KeyError, ValueError, TypeError) as error:
            raise fail("input", str(error).strip("'\"")) from None
        if spec is None:
            raise fail("input", "expected an object like {\"size\": [256, 256], \"channels\": 1, ...}")

        build = raw["build"]
        if not isinstance(build, dict):
            raise fail("build", "expected an object of builder keyword arguments")
        for reserved in ("num_classes", "in_channels"):
            if reserved in build:
                raise fail(f"build.{reserved}", "comes from the card's classes / input.channels; remove it here")

        weights = raw.get("weights")
        if weights is not None:
            if not isinstance(weights, dict):
                raise fail("weights", "expected null or an object with file, sha256, dtype")
            file_name = weights.get("file")
            if not isinstance(file_name, str) or not file_name.endswith(".safetensors") or "/" in file_name \
                    or "\\" in file_name:
                raise fail("weights.file", f"expected a file name ending in .safetensors next to the card, "
                                           f"got {file_name!r}")
            if not isinstance(weights.get("sha256"), str) or not _SHA256.match(weights["sha256"]):
                raise fail("weights.sha256", "expected 64 lower-case hex digits")
            if weights.get("dtype", "float32") not in WEIGHT_DTYPES:
                raise fail("weights.dtype", f"expected one of {WEIGHT_DTYPES}, got {weights.get('dtype')!r}")
            url = weights.get("url")
            if url is not None and (not isinstance(url, str) or not url.startswith(("https://", "http://"))):
                raise fail("weights.url", f"expected an http(s) address of the released file, got {url!r}")
            size = weights.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
                raise fail("weights.size", f"expected the file's size in bytes (a positive integer), got {size!r}")

        training = raw["training"]
        if not isinstance(training, dict):
            raise fail("training", "expected an object with data, recipe, notes")
        if not (task == "promptable" and training.get("recipe") is None):  # released weights, not trained here
            _check_recipe(training.get("recipe"), fail)

        metrics = raw.get("metrics", {})
        speed = raw.get("speed", {})
        for key, value in (("metrics", metrics), ("speed", speed)):
            if not isinstance(value, dict):
                raise fail(key, "expected an object")
        _check_int8(raw.get("int8"), task, fail)
        if raw.get("presence") is not None:
            problems = presence_problems(raw["presence"])
            if problems:
                raise fail("presence", "; ".join(problems))
        default = raw.get("default", False)
        if not isinstance(default, bool):
            raise fail("default", f"expected true or false, got {default!r}")
        intended_use = raw.get("intended_use", DEFAULT_INTENDED_USE)
        if not isinstance(intended_use, str) or not intended_use.strip():
            raise fail("intended_use", "expected a non-empty string")
        notes = raw.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise fail("notes", "expected a list of strings")

        return cls(name=name, architecture=architecture, task=task, summary=summary, paper=paper, classes=classes,
                   num_classes=num_classes, input=spec, build=build, output=output, weights=weights,
                   training=training, metrics=metrics, speed=speed, default=default, intended_use=intended_use,
                   notes=tuple(notes), path=Path(path) if path is not None else None, raw=raw)

    # ---------------------------------------------------------------------------------------------------- properties
    @property
    def weights_path(self) -> Optional[Path]:
        """The weights file: next to the card when it is there, else the copy fetched into the user models folder
        (:mod:`.user_models`) when that exists, else the path next to the card (which does not exist: loading then
        says how to fetch it). None when the card lists no weights."""
        if not self.weights:
            return None
        base = self.path.parent if self.path is not None else Path(".")
        beside = base / self.weights["file"]
        if beside.is_file():
            return beside
        fetched = fetched_weights_path(self.weights["file"], self.weights["sha256"])
        return fetched if fetched.is_file() else beside

    @property
    def has_weights(self) -> bool:
        """True when the card lists weights and the file exists (its checksum is checked on load, not here)."""
        path = self.weights_path
        return path is not None and path.is_file()

    @property
    def weights_url(self) -> Optional[str]:
        """Where the released weights can be downloaded from (``nerveseg models fetch``); None when not published."""
        return (self.weights or {}).get("url")

    @property
    def labels(self) -> Dict[int, str]:
        """``{label value: class key}``."""
        return {c.label: c.key for c in self.classes}

    def build_kwargs(self, **overrides: Any) -> Dict[str, Any]:
        """Builder keyword arguments: the card's ``build`` block, ``num_classes`` and ``in_channels``, overrides."""
        kwargs = copy.deepcopy(self.build)
        kwargs["num_classes"] = self.num_classes
        kwargs["in_channels"] = self.input.channels
        kwargs.update(copy.deepcopy(overrides))
        return kwargs

    # ----------------------------------------------------------------------------------------------------- updating
    def to_json(self) -> Dict[str, Any]:
        """The card as a JSON-ready dict (a deep copy of what was read, so it round-trips unknown fields too)."""
        return copy.deepcopy(self.raw)

    def with_updates(self, **fields: Any) -> "ModelCard":
        """A new validated card with top-level fields replaced (e.g. ``weights=..., metrics=..., speed=...``)."""
        data = self.to_json()
        data.update(copy.deepcopy(fields))
        return ModelCard.from_dict(data, self.path)


def card_file_name(path: Path) -> str:
    """The model name a card file stands for: ``<name>.json``, or ``<name>/card.json`` for a site model's folder."""
    return path.parent.name if path.name == SITE_CARD_FILE else path.stem


def _parse_classes(value: Any, fail) -> Tuple[SegmentClass, ...]:
    if not isinstance(value, list) or not value:
        raise fail("classes", "expected a non-empty list of {\"key\": ..., \"label\": ...}")
    classes = []
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping) or "key" not in entry or "label" not in entry:
            raise fail(f"classes[{index}]", f"expected {{\"key\": ..., \"label\": ...}}, got {entry!r}")
        try:
            classes.append(segment_class(str(entry["key"]), int(entry["label"])))
        except (TypeError, ValueError) as error:
            raise fail(f"classes[{index}]", str(error)) from None
    classes.sort(key=lambda c: c.label)
    labels = [c.label for c in classes]
    if labels != list(range(1, len(classes) + 1)):
        raise fail("classes", f"label values must be 1..N without gaps (channel c is label c), got {labels}")
    keys = [c.key for c in classes]
    if len(set(keys)) != len(keys):
        raise fail("classes", f"a class appears twice: {keys}")
    return tuple(classes)


def _check_int8(record: Any, task: str, fail) -> None:
    """The optional ``int8`` block: how the model's INT8 ONNX graph is made (``recipe``) and what was measured of it
    (benchmarks/int8/bench_int8.py). ``max_dice_change`` (the largest per-class |Dice int8 - Dice float32|) decides
    whether ``auto`` runs it; a block that only names the recipe (nothing measured yet) keeps ``auto`` on float32."""
    if record is None:
        return
    if task != "semantic":
        raise fail("int8", f"only semantic models have an INT8 graph; remove it from this {task} model's card")
    if not isinstance(record, dict):
        raise fail("int8", "expected an object with recipe, max_dice_change, dice_change, ms_per_frame, ...")
    recipe = record.get("recipe")
    if recipe is not None and recipe not in INT8_RECIPES:
        raise fail("int8.recipe", f"expected one of {', '.join(INT8_RECIPES)}, got {recipe!r}")
    change = record.get("max_dice_change")
    if change is not None and (isinstance(change, bool) or not isinstance(change, (int, float)) or not change >= 0):
        raise fail("int8.max_dice_change", f"expected a number >= 0, got {change!r}")
    for key in ("dice_change", "ms_per_frame"):
        value = record.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise fail(f"int8.{key}", f"expected an object of numbers, got {value!r}")
    folds = record.get("cross_validation")
    if folds is not None:
        change = folds.get("max_dice_change") if isinstance(folds, dict) else None
        if isinstance(change, bool) or not isinstance(change, (int, float)) or not change >= 0:
            raise fail("int8.cross_validation.max_dice_change", f"expected a number >= 0, got {change!r}")


#: How a ``presence`` block's raw score is computed (see :mod:`NerveSegLogic.inference.presence`).
PRESENCE_SCORES = ("max_probability",)


def presence_problems(block: Any) -> list:
    """Problems of a card's ``presence`` block (empty list when valid); the block is described in
    :mod:`NerveSegLogic.inference.presence`, which reads it."""
    problems = []
    if not isinstance(block, Mapping):
        return [f"expected an object, got {type(block).__name__}"]
    if block.get("score", "max_probability") not in PRESENCE_SCORES:
        problems.append(f"score: expected one of {PRESENCE_SCORES}, got {block.get('score')!r}")
    for key, value in (block.get("calibration") or {}).items():
        if not isinstance(value, Mapping) or not all(_finite(value.get(name)) for name in ("a", "b")):
            problems.append(f"calibration.{key}: expected {{\"a\": number, \"b\": number}}, got {value!r}")
    for key, value in (block.get("thresholds") or {}).items():
        if not isinstance(value, Mapping) or not all(_finite(value.get(name)) for name in ("show", "uncertain")):
            problems.append(f"thresholds.{key}: expected {{\"show\": number, \"uncertain\": number}}, got {value!r}")
        elif not 0.0 <= value["uncertain"] <= value["show"] <= 1.0:
            problems.append(f"thresholds.{key}: expected 0 <= uncertain <= show <= 1, got {dict(value)}")
    return problems


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_recipe(recipe: Any, fail) -> None:
    if not isinstance(recipe, dict):
        raise fail("training.recipe", "expected an object with loss, optimizer, schedule, batch_size, epochs, ...")
    if recipe.get("loss") not in LOSSES:
        raise fail("training.recipe.loss", f"expected one of {LOSSES}, got {recipe.get('loss')!r}")
    optimizer = recipe.get("optimizer")
    if not isinstance(optimizer, dict) or optimizer.get("name") not in OPTIMIZERS:
        raise fail("training.recipe.optimizer", f"expected {{\"name\": one of {OPTIMIZERS}, \"lr\": ...}}")
    if not isinstance(optimizer.get("lr"), (int, float)) or not optimizer["lr"] > 0:
        raise fail("training.recipe.optimizer.lr", f"expected a positive number, got {optimizer.get('lr')!r}")
    schedule = recipe.get("schedule")
    if not isinstance(schedule, dict) or schedule.get("name") not in SCHEDULES:
        raise fail("training.recipe.schedule", f"expected {{\"name\": one of {SCHEDULES}, ...}}")
    if schedule.get("per", "epoch") not in SCHEDULE_STEPS:
        raise fail("training.recipe.schedule.per", f"expected one of {SCHEDULE_STEPS}, got {schedule.get('per')!r}")
    for key in ("batch_size", "epochs"):
        if not isinstance(recipe.get(key), int) or recipe[key] <= 0:
            raise fail(f"training.recipe.{key}", f"expected a positive integer, got {recipe.get(key)!r}")
    if not isinstance(recipe.get("augmentations", []), list):
        raise fail("training.recipe.augmentations", "expected a list of augmentation names")
    if recipe.get("sampling", "uniform") not in SAMPLINGS:
        raise fail("training.recipe.sampling", f"expected one of {SAMPLINGS}, got {recipe.get('sampling')!r}")
    if not isinstance(recipe.get("tta", False), bool):
        raise fail("training.recipe.tta", "expected true or false")


def load_card(path: os.PathLike) -> ModelCard:
    """Read and validate one card file; ValueError names the file (bad JSON or a bad field)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read model card ({error.strerror or error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    return ModelCard.from_dict(data, path)


def write_card(card_dict: Mapping[str, Any], path: os.PathLike) -> ModelCard:
    """Validate ``card_dict`` and write it to ``path`` atomically (temporary file, then rename); return the card.

    A card that fails validation raises ValueError and leaves the file already at ``path`` untouched.
    """
    path = Path(path)
    card = ModelCard.from_dict(card_dict, path)
    text = json.dumps(card.to_json(), indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes the file private; a card is read like any data file
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return card


__all__ = ["ModelCard", "load_card", "write_card", "DEFAULT_INTENDED_USE", "TASKS"]
