"""Model weights: safetensors only, sha256-checked, never unpickled.

A weights file is a flat safetensors dict ``{parameter name: tensor}`` with metadata naming the architecture.
Loading checks, in this order, that the file exists, that its sha256 is the one the card lists, that it parses as
safetensors (a pickle renamed ``.safetensors`` fails here: safetensors reads a JSON header and raw bytes, it has
no code path that runs pickle), and that its keys and shapes match the model exactly. Each failure raises
:class:`WeightsError` naming the file and what differed. ``torch.load`` is never called.

torch and safetensors are imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Mapping, Optional

from NerveSegLogic.checksums import sha256_file  # noqa: F401 - also this module's name for it (tests, benchmarks)

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Prefixes that wrappers add to parameter names: DistributedDataParallel / DataParallel and torch.compile.
STRIPPED_PREFIXES = ("module.", "_orig_mod.")
DTYPES = ("float32", "float16")


class WeightsError(RuntimeError):
    """A weights file that cannot be used: missing, wrong checksum, not safetensors, or not matching the model."""


def strip_prefixes(state: Mapping[str, "torch.Tensor"]) -> Dict[str, "torch.Tensor"]:
    """Keys without leading ``module.`` / ``_orig_mod.`` (repeatedly, in any order)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def save_weights(model_or_state, path: os.PathLike, dtype: str = "float32",
                 architecture: Optional[str] = None) -> str:
    """Write a model's parameters and buffers as safetensors; return the file's sha256 (hex).

    Floating-point tensors are stored as ``dtype`` ("float32" or "float16"); integer buffers keep their type.
    Metadata records the architecture (``architecture`` or the model's ``nerveseg_architecture`` attribute), the
    dtype and the format. The file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    import torch
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"weights dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(model_or_state, torch.nn.Module):
        state = model_or_state.state_dict()
        architecture = architecture or getattr(model_or_state, "nerveseg_architecture", None) \
            or type(model_or_state).__name__
    else:
        state = dict(model_or_state)
        architecture = architecture or "unknown"
    target = getattr(torch, dtype)
    tensors = {}
    for key, value in strip_prefixes(state).items():
        value = value.detach().cpu()
        # clone: safetensors refuses tensors that share storage, and a cast must not alias the live model
        tensors[key] = (value.to(target) if value.is_floating_point() else value).contiguous().clone()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"format": "pt", "architecture": str(architecture), "dtype": dtype,
                                               "writer": "NerveSeg"})
        os.chmod(temporary, 0o644)  # mkstemp makes the file private; weights are read like any data file
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return sha256_file(path)


def read_weights(path: os.PathLike, expected_sha256: Optional[str]) -> Dict[str, "torch.Tensor"]:
    """The tensors of a safetensors file, floating point cast to float32, prefixes stripped.

    ``expected_sha256`` is checked before the file is parsed; None skips the check (only for files the caller
    vouches for, such as a checkpoint it just wrote). Raises WeightsError naming the file: missing, checksum
    differs, or not a safetensors file.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise WeightsError(f"weights file {path}: sha256 {actual} differs from the model card's "
                               f"{expected_sha256} (file changed, truncated or not the one the card describes)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"weights file {path} is not a valid safetensors file ({error}); "
                           f"only safetensors are loaded, nothing is unpickled") from None
    return {key: (value.to(torch.float32) if value.is_floating_point() else value)
            for key, value in strip_prefixes(tensors).items()}


def apply_weights(model: "torch.nn.Module", tensors: Mapping[str, "torch.Tensor"], source: os.PathLike) -> None:
    """Copy ``tensors`` into ``model`` when keys and shapes match exactly; else WeightsError naming ``source``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(expected[key].shape)}"
                  for key in sorted(set(expected) & set(tensors)) if tensors[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f" ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsError(f"weights file {source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(dict(tensors), strict=True)
