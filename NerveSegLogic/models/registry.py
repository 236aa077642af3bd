"""The model registry: names -> model cards -> models, weights and ONNX graphs.

Each registered model is a card file ``Resources/Models/<name>.json`` (see :mod:`.card`). The card's
``architecture`` key selects a builder through the one fixed table :data:`ARCHITECTURES` below; a string is never
turned into an arbitrary import. Importing this module does not import torch: the architecture modules and torch
load when a model is first built.

    from NerveSegLogic.models import registry
    registry.names()                        # ['attention-unet', 'bpmsegnet', ...]
    model = registry.load("smistad-unet")   # eval mode, sha256-checked safetensors weights
    registry.export_onnx("sa-unet", "sa-unet.onnx")
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from NerveSegLogic.resources import models_dir

from . import onnx_graph
from .card import ModelCard, load_card
from .user_models import site_card_files
from .weights import WeightsError, apply_weights, read_weights, save_weights as _save_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

#: architecture key (a card's "architecture") -> (module inside NerveSegLogic.models, builder function).
#: The only way a card reaches code: a fixed table, not an import path taken from the card.
ARCHITECTURES: Dict[str, Tuple[str, str]] = {
    "smistad_unet": ("smistad_unet", "build_smistad_unet"),
    "sa_unet": ("sa_unet", "build_sa_unet"),
    "ragcm": ("ragcm", "build_ragcm"),
    "bpmsegnet": ("bpmsegnet", "build_bpmsegnet"),
    "monai_unet": ("baselines", "build_monai_unet"),
    "monai_attention_unet": ("baselines", "build_monai_attention_unet"),
    "monai_unetplusplus": ("baselines", "build_monai_unetplusplus"),
    "litemedsam": ("litemedsam", "build_litemedsam"),
    "efficientnet_unet": ("efficientnet_unet", "build_efficientnet_unet"),
}

ONNX_INPUT = "image"
ONNX_OUTPUT = "probabilities"


# --------------------------------------------------------------------------------------------------------- cards
def _cards_dir(directory: Optional[os.PathLike]) -> Path:
    return Path(directory) if directory is not None else models_dir()


def _card_files(directory: Optional[os.PathLike]) -> Dict[str, Path]:
    """{name: card file}: the shipped cards, plus (for the default folder) the site models of the user models
    folder (:mod:`.user_models`; a site model never takes a shipped name, ``nerveseg models add`` refuses it)."""
    folder = _cards_dir(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"model card folder {folder} does not exist")
    files = {path.stem: path for path in sorted(folder.glob("*.json"))}
    if directory is None:
        for name, path in site_card_files().items():
            files.setdefault(name, path)
    return dict(sorted(files.items()))


#: Tasks of the models that segment a live frame on their own. A ``promptable`` model (LiteMedSAM: box or clicks
#: -> one mask) serves annotators and is listed only when asked for (``names(tasks=None)`` or ``("promptable",)``).
LIVE_TASKS = ("semantic", "instance")


def _card_task(path: Path) -> Optional[str]:
    """The ``task`` a card file declares, read without validating it (None when unreadable: card() says why)."""
    try:
        task = json.loads(path.read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None
    return task if isinstance(task, str) else None


def names(directory: Optional[os.PathLike] = None, tasks: Optional[Tuple[str, ...]] = LIVE_TASKS) -> List[str]:
    """Registered model names (card file stems), sorted: those whose card's task is in ``tasks`` (default: the
    live-segmentation tasks; None: every card). A card whose task cannot be read is listed, so that loading it
    reports what is wrong."""
    files = _card_files(directory)
    if tasks is None:
        return sorted(files)
    return sorted(name for name, path in files.items() if _card_task(path) in (*tasks, None))


def card(name: str, directory: Optional[os.PathLike] = None) -> ModelCard:
    """The validated card of ``name``, read fresh from disk (callers never share one mutable object).

    Raises KeyError listing the valid names for an unknown name; ValueError naming the file and field for an
    invalid card, including an architecture the registry does not know.
    """
    files = _card_files(directory)
    if name not in files:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(files)) or '(none)'}")
    result = load_card(files[name])
    if result.architecture not in ARCHITECTURES:
        raise ValueError(f"{files[name]}: field 'architecture': {result.architecture!r} is not a known "
                         f"architecture; expected one of {', '.join(sorted(ARCHITECTURES))}")
    return result


_card_by_name = card  # export_onnx has a parameter named ``card``


def cards(directory: Optional[os.PathLike] = None, tasks: Optional[Tuple[str, ...]] = LIVE_TASKS) -> List[ModelCard]:
    """The cards of :func:`names` (same ``tasks`` filter), sorted by name. A site model whose card cannot be read
    is left out with a warning (``nerveseg models list`` says what is wrong with it), so the others still load; a
    broken shipped card raises."""
    out = []
    files = _card_files(directory)
    for name in names(directory, tasks):
        try:
            out.append(card(name, directory))
        except ValueError as error:
            if files[name].parent == _cards_dir(directory):  # a shipped card: a packaging error, never hidden
                raise
            log.warning("site model %s left out: %s", name, error)
    return out


def default_name(directory: Optional[os.PathLike] = None) -> str:
    """The name of the card marked ``"default": true``; ValueError unless exactly one card has it."""
    marked = [c.name for c in cards(directory) if c.default]
    if len(marked) != 1:
        raise ValueError(f"exactly one model card must have \"default\": true; found {len(marked)}: {marked}")
    return marked[0]


#: The promptable model used when there is no ``"default_promptable": true`` card (a Resources folder with only the
#: released LiteMedSAM, as tests make).
FALLBACK_PROMPTABLE = "litemedsam"


def default_promptable_name(directory: Optional[os.PathLike] = None) -> str:
    """The promptable model that annotation tools use when none is named: the promptable card marked
    ``"default_promptable": true``; with none marked, :data:`FALLBACK_PROMPTABLE` when registered, else the only
    promptable card. ValueError when several are marked or none can be chosen. The others stay selectable by
    name."""
    promptable = cards(directory, tasks=("promptable",))
    marked = [c.name for c in promptable if c.task == "promptable" and c.raw.get("default_promptable") is True]
    if len(marked) > 1:
        raise ValueError(f"at most one promptable model card may have \"default_promptable\": true; found "
                         f"{len(marked)}: {marked}")
    if marked:
        return marked[0]
    names_found = [c.name for c in promptable if c.task == "promptable"]
    if FALLBACK_PROMPTABLE in names_found:
        return FALLBACK_PROMPTABLE
    if len(names_found) == 1:
        return names_found[0]
    raise ValueError("no default promptable model: mark one promptable card \"default_promptable\": true "
                     f"(promptable cards: {', '.join(names_found) or '(none)'})")


# -------------------------------------------------------------------------------------------------------- models
def builder(architecture: str):
    """The builder function for an architecture key of :data:`ARCHITECTURES` (imports its module, and torch)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(sorted(ARCHITECTURES))}")
    module_name, function_name = ARCHITECTURES[architecture]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, function_name)


def build_from_card(model_card: ModelCard, **overrides: Any) -> "torch.nn.Module":
    """A randomly initialised model from a card's architecture and build arguments (plus ``overrides``)."""
    model = builder(model_card.architecture)(**model_card.build_kwargs(**overrides))
    model.nerveseg_name = model_card.name
    model.nerveseg_architecture = model_card.architecture
    return model


def build(name: str, directory: Optional[os.PathLike] = None, **overrides: Any) -> "torch.nn.Module":
    """A randomly initialised model for ``name`` (train mode, as torch builds it).

    ``overrides`` replace the card's build arguments (e.g. ``num_classes=5``, or smaller proposal counts in tests).
    """
    return build_from_card(card(name, directory), **overrides)


def parameter_count(name_or_card: Union[str, ModelCard], directory: Optional[os.PathLike] = None) -> int:
    """Number of parameters (trainable or not; buffers excluded), counted without allocating them (meta device)."""
    import torch

    model_card = card(name_or_card, directory) if isinstance(name_or_card, str) else name_or_card
    with torch.device("meta"):
        model = build_from_card(model_card)
    return sum(p.numel() for p in model.parameters())


def load_from_card(model_card: ModelCard, device: str = "cpu", weights_path: Optional[os.PathLike] = None,
                   sha256: Optional[str] = None) -> "torch.nn.Module":
    """A model in eval mode with the card's weights (or ``weights_path``) loaded; see :func:`load`."""
    path = Path(weights_path) if weights_path is not None else model_card.weights_path
    if path is None:
        raise WeightsError(f"model {model_card.name!r} ships no weights (its card {model_card.path} has "
                           f"\"weights\": null); train it first or pass weights_path")
    card_file = model_card.weights_path
    if weights_path is None and not path.is_file():
        raise WeightsError(missing_weights_message(model_card))
    # The card's checksum describes the card's own file; another file (--weights FILE: a run's output, a
    # fine-tuned copy) is checked against ``sha256`` when the caller has one. Either way it is only ever read as
    # safetensors, never unpickled.
    is_card_file = card_file is not None and path.resolve() == Path(card_file).resolve()
    expected = sha256 or ((model_card.weights or {}).get("sha256") if is_card_file else None)
    if expected is None:
        log.warning("loading %s without a sha256 check: %s", path,
                    "the card lists no checksum" if is_card_file else f"not the file the card of {model_card.name} "
                    "describes, and no checksum was given for it")
    tensors = read_weights(path, expected)
    model = build_from_card(model_card)
    apply_weights(model, tensors, path)
    return model.to(device).eval()


def missing_weights_message(model_card: ModelCard) -> str:
    """Why a card's weights cannot be loaded on this machine, and how to get them."""
    file_name = model_card.weights["file"]
    if model_card.weights_url:
        return (f"the weights of model {model_card.name!r} ({file_name}) are not on this machine: they are a "
                f"release download; run 'nerveseg models fetch {model_card.name}' (from {model_card.weights_url}), "
                f"or 'nerveseg models fetch {model_card.name} --from FILE' with a copy obtained another way")
    return (f"weights file {model_card.weights_path} of model {model_card.name!r} does not exist and its card "
            f"{model_card.path} gives no address to fetch it from")


def load(name: str, device: str = "cpu", weights_path: Optional[os.PathLike] = None,
         sha256: Optional[str] = None, directory: Optional[os.PathLike] = None) -> "torch.nn.Module":
    """The model ``name`` in eval mode on ``device`` with weights from safetensors (never unpickled).

    The file is the card's ``weights.file`` (next to the card) unless ``weights_path`` is given; its sha256 must
    equal ``sha256`` or else the card's ``weights.sha256``. float16 files are cast to float32. Raises
    :class:`WeightsError` naming the file when it is missing, its checksum differs, it is not safetensors, or its
    keys or shapes differ from the model; KeyError for an unknown name.
    """
    return load_from_card(card(name, directory), device=device, weights_path=weights_path, sha256=sha256)


def save_weights(model: "torch.nn.Module", path: os.PathLike, dtype: str = "float32") -> str:
    """Write ``model``'s weights to ``path`` (safetensors; metadata names the architecture); return the sha256."""
    return _save_weights(model, path, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------- ONNX
def export_onnx(name_or_module: Union[str, "torch.nn.Module"], path: os.PathLike, card: Optional[ModelCard] = None,
                opset: int = 17, allow_random_weights: bool = False, simplify: bool = True) -> Path:
    """Export a semantic model to ONNX: input ``image`` (B, C, H, W) float32, output ``probabilities``
    (B, K, H, W), softmax over the K classes, dynamic batch axis, H and W fixed to the card's input size.

    A name loads the card's weights (WeightsError when it ships none, unless ``allow_random_weights``); a module is
    exported as it is, with ``card`` giving the input size (default: the module's card name, else 1x256x256).
    The card is stored in the graph's metadata (``nerveseg.card``). ``simplify`` applies the exact rewrites of
    :mod:`.onnx_graph` (False: torch's graph as exported, for comparisons). Raises ValueError for instance models,
    whose two-stage, data-dependent output (proposals, NMS, per-instance masks) is not exported.
    """
    import torch

    model_card = card
    if isinstance(name_or_module, str):
        model_card = model_card or _card_by_name(name_or_module)
        _check_semantic(model_card)
        if model_card.has_weights or not allow_random_weights:
            module = load_from_card(model_card)
        else:
            log.warning("exporting %s with random weights: its card lists no trained weights", model_card.name)
            module = build_from_card(model_card).eval()
    else:
        module = name_or_module
        if model_card is None and getattr(module, "nerveseg_name", None):
            model_card = _card_by_name(module.nerveseg_name)
        if model_card is not None:
            _check_semantic(model_card)
        elif getattr(module, "task", "semantic") == "instance":
            raise ValueError(_INSTANCE_EXPORT_REFUSAL)
    if model_card is not None:
        channels, height, width = model_card.input.channels, model_card.input.height, model_card.input.width
    else:
        channels, height, width = 1, 256, 256

    was_training = module.training
    wrapper = _with_softmax(module).eval()
    example = torch.zeros(1, channels, height, width, dtype=torch.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter: the dynamo one needs onnxscript, which is not a dependency.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            # instance norm always normalises with the input's own statistics, so "train=True" is its eval form
            warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
            # torch < 2.5 has no ``dynamo`` argument (its exporter is the TorchScript one anyway).
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(wrapper, (example,), str(path), **legacy, opset_version=opset,
                              input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                              do_constant_folding=True)
    finally:
        module.train(was_training)
    if simplify:
        _simplify(path)
    _add_metadata(path, model_card)
    return path


#: Bumped when :func:`export_onnx` writes a different graph for the same weights (the live path's ONNX cache is
#: keyed by it). 2: zero pads folded into the convolutions that follow them (models/onnx_graph.py).
ONNX_GRAPH_VERSION = 2


def _simplify(path: Path) -> None:
    """Exact rewrites that make the exported graph cheaper to run (see :mod:`.onnx_graph`). Should one fail (an
    older onnx whose reference evaluator lacks an operator, say), the graph torch wrote stays: slower, not wrong."""
    import onnx

    graph = onnx.load(str(path))
    try:
        folded = onnx_graph.fold_pads_into_convs(graph)
    except Exception as error:  # noqa: BLE001 - any failure here only costs speed
        log.warning("%s: kept the graph as exported, without folding its pads (%s: %s)", path.name,
                    type(error).__name__, error)
        return
    if folded:
        log.debug("%s: %d Pad nodes folded into the convolutions after them", path.name, folded)
        onnx.save(graph, str(path))


_INSTANCE_EXPORT_REFUSAL = ("instance models are not exported to ONNX: their output (proposals, NMS, per-instance "
                            "boxes and masks) has a data-dependent size; run them with the torch backend")


def _check_semantic(model_card: ModelCard) -> None:
    if model_card.task != "semantic":
        raise ValueError(f"{model_card.name}: {_INSTANCE_EXPORT_REFUSAL}")


def _add_metadata(path: Path, model_card: Optional[ModelCard]) -> None:
    import onnx

    graph = onnx.load(str(path))
    entries = {"nerveseg.output": ONNX_OUTPUT}
    if model_card is not None:
        entries["nerveseg.name"] = model_card.name
        entries["nerveseg.card"] = json.dumps(model_card.to_json(), sort_keys=True)
    for key, value in entries.items():
        prop = graph.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def _with_softmax(model: "torch.nn.Module") -> "torch.nn.Module":
    """``model`` followed by a softmax over the class axis (what the ONNX graph outputs)."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.model = inner

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(image), dim=1)

    return Probabilities(model)


def describe(model_card: ModelCard) -> Dict[str, Any]:
    """The summary `nerveseg models list --json` prints for one card (parameters counted on the meta device)."""
    speed = model_card.speed or {}
    return {
        "name": model_card.name,
        "task": model_card.task,
        "architecture": model_card.architecture,
        "classes": [c.key for c in model_card.classes],
        "parameters": parameter_count(model_card),
        "weights": model_card.has_weights,
        "weights_url": model_card.weights_url,
        "base_model": (model_card.raw.get("site") or {}).get("base_model"),
        "default": model_card.default,
        "cpu_ms_per_frame": copy.deepcopy(speed.get("cpu_ms_per_frame")),
        "input": [model_card.input.height, model_card.input.width],
        "summary": model_card.summary,
    }
