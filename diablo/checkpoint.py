"""Checkpoints: one .safetensors file, weights plus JSON metadata; loading never executes code.

The file's string metadata holds `diablo_format` (the format version), `model_config` (the
ModelConfig as JSON) and `meta` (training config, metrics history, test metrics, ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from diablo.config import ModelConfig
from diablo.files import atomic_write
from diablo.model import DiabloNet, build_model

FORMAT_VERSION = "1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def save_checkpoint(
    path: str | os.PathLike,
    model: DiabloNet,
    config: ModelConfig,
    meta: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write `model`'s weights (cast to `dtype`) and `config` + `meta` atomically to `path`."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    path = Path(path)
    tensors = {
        name: (t.to(DTYPES[dtype]) if t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    metadata = {
        "diablo_format": FORMAT_VERSION,
        "model_config": json.dumps(config.to_dict()),
        "meta": json.dumps(meta or {}, default=str),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, Any]]:
    """The raw tensors, config and meta of a checkpoint; ValueError if it is not one."""
    return _read(path, with_tensors=True)


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """The config and meta of a checkpoint without reading its tensors (model cards, listings).

    Same errors as `read_checkpoint`: FileNotFoundError if missing, ValueError if not a checkpoint.
    """
    _, config, meta = _read(path, with_tensors=False)
    return config, meta


def _read(
    path: str | os.PathLike, with_tensors: bool
) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()} if with_tensors else {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a diablo checkpoint (not a valid safetensors file: {reason})") from None
    if metadata.get("diablo_format") != FORMAT_VERSION or "model_config" not in metadata:
        raise ValueError(f"{path} is not a diablo checkpoint (no diablo_format {FORMAT_VERSION} metadata)")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} has an invalid model config: {error}") from None
    return tensors, config, meta


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "auto"
) -> tuple[DiabloNet, ModelConfig, dict[str, Any]]:
    """Rebuild the model from the stored config; never reads backbone weights."""
    tensors, config, meta = read_checkpoint(path)
    model = build_model(config, load_pretrained=False)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict({name: t.to(expected[name].dtype) for name, t in tensors.items()})
    return model.to(resolve_device(device)).eval(), config, meta
