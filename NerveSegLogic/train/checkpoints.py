"""A training run's checkpoints: writing them, finding the one in an output folder, and resuming from it.

Checkpoints are safetensors, nothing pickled: ``checkpoint-<step>.safetensors`` holds the model's tensors
(``model.*``), the optimiser's per-parameter state (``optimizer.<index>.<name>``) and torch's RNG state;
``checkpoint.json`` holds the epoch, the step, the position inside the epoch, the loss history, the best epoch, the
optimiser's hyper-parameters and everything the run was started with (its setup). The JSON is written last and names
its tensor file, so a crash while saving leaves the previous checkpoint whole. A run resumes only a checkpoint of
the same setup (:func:`check_resumable`; the epochs may grow).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .evaluate import json_ready, write_json

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint in the output folder cannot be resumed (other model, other setup, or damaged files)."""


def _flatten_optimizer(optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Optimizer state as (tensors, JSON-ready rest)."""
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": copy.deepcopy(meta["param_groups"])}


def save_checkpoint(out: Path, model, optimizer, progress: Dict[str, Any]) -> Path:
    """Write the tensors of model and optimizer and torch's RNG state, then ``checkpoint.json`` (atomically)."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    file_name = f"checkpoint-{int(progress['global_step']):08d}.safetensors"
    temporary = out / f".{file_name}.tmp"
    save_file(tensors, str(temporary), metadata={"format": str(CHECKPOINT_FORMAT), "model": progress["model"]})
    os.replace(temporary, out / file_name)
    record = dict(progress, tensors=file_name, optimizer=optim_meta, format=CHECKPOINT_FORMAT)
    write_json(out / CHECKPOINT_JSON, record)
    for old in out.glob("checkpoint-*.safetensors"):
        if old.name != file_name:
            old.unlink()
    return out / file_name


def read_checkpoint(out: Path) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(progress record, tensors) of the checkpoint in ``out``, or None when there is none."""
    from safetensors.torch import load_file

    path = out / CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tensors_path = out / record["tensors"]
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint record ({error}); delete it to start afresh") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {record.get('format')} is not {CHECKPOINT_FORMAT}")
    if not tensors_path.is_file():
        raise CheckpointError(f"{path} names {tensors_path.name}, which is missing; delete {path} to start afresh")
    return record, load_file(str(tensors_path))


def check_resumable(record: Mapping[str, Any], setup: Mapping[str, Any], path: Path) -> None:
    """The checkpoint must come from the same model, input, data split, seed and recipe (epochs may grow)."""
    for key, value in setup.items():
        theirs, ours = record.get("setup", {}).get(key), json_ready(value)
        if key == "recipe" and isinstance(theirs, dict) and isinstance(ours, dict):
            theirs = {k: v for k, v in theirs.items() if k != "epochs"}
            ours = {k: v for k, v in ours.items() if k != "epochs"}
        if theirs != ours:
            raise CheckpointError(f"{path / CHECKPOINT_JSON} was written by a different run: {key} was {theirs!r}, "
                                  f"now {ours!r}. Use another --out, or delete the checkpoint to start afresh.")



def restore_checkpoint(model, optimizer, record: Mapping[str, Any], tensors: Mapping[str, Any]) -> None:
    """Load what :func:`save_checkpoint` wrote into ``model`` and ``optimizer``, and restore torch's RNG state (and
    CUDA's, when as many devices are there as when it was saved)."""
    import torch

    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(_unflatten_optimizer(tensors, record["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
