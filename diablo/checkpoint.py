"""Checkpoints: one .safetensors file, weights plus JSON metadata; loading never executes code.

The file's string metadata holds `diablo_format` (the format version), `model_config` (the
ModelConfig as JSON), `meta` (training config, metrics history, test metrics, ...) and three
SHA-256 digests that let a file vouch for itself:

- `config_sha256`: of the `model_config` string (UTF-8),
- `meta_sha256`: of the `meta` string (UTF-8),
- `weights_sha256`: of the stored tensors (`weights_digest`: sorted by name, each one's name,
  dtype, shape and bytes).

Reading refuses a file whose metadata or tensors no longer match its digests (an edited `alpha`,
a flipped weight byte). Digests catch accidental and careless edits, not a forger: anyone can
recompute them. A file written before digests existed still loads, with one
`UnverifiedCheckpointWarning` per path and process; `stamp_checkpoint` adds them to it.
`checkpoint_digest` names the model a file holds (config and weights, not meta), for cache keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
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
# The metadata key of each digest, and the metadata string it covers ("weights": the tensors).
DIGEST_KEYS = {"model_config": "config_sha256", "meta": "meta_sha256", "weights": "weights_sha256"}
# safetensors' names of the dtypes, as they enter the weights digest.
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}

_warned: set[str] = set()  # paths already warned about for having no digests


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without digests (written before they existed) was read unverified."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; anything else must parse and be available here.

    ValueError (one line, naming the devices available) for a string torch cannot parse, or for a
    cuda / mps device this machine does not have.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {device!r}; available: {', '.join(_available_devices())}") from None
    else:
        raise ValueError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {device!r}")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not torch.cuda.is_available() or (resolved.index is not None and resolved.index >= count):
            raise ValueError(f"device {str(device)!r} is not available here; available: "
                             f"{', '.join(_available_devices())}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available here; available: {', '.join(_available_devices())}")
    return resolved


def _available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def text_digest(text: str) -> str:
    """SHA-256 (hex) of a metadata string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of tensors as stored: for each name in sorted order, the UTF-8 line
    `json.dumps([name, dtype, shape]) + "\\n"` (dtype as safetensors names it: "F32", "F16", ...;
    shape a list of ints), then the tensor's bytes, little-endian, in row-major order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name} has dtype {tensor.dtype}, which checkpoints do not store")
        header = json.dumps([name, SAFETENSORS_DTYPES[tensor.dtype], list(tensor.shape)]) + "\n"
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _digests(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The digest metadata entries of a checkpoint's metadata strings and tensors."""
    return {
        DIGEST_KEYS["model_config"]: text_digest(metadata["model_config"]),
        DIGEST_KEYS["meta"]: text_digest(metadata["meta"]),
        DIGEST_KEYS["weights"]: weights_digest(tensors),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: DiabloNet,
    config: ModelConfig,
    meta: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write `model`'s weights (cast to `dtype`), `config`, `meta` and their digests atomically to `path`."""
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
    metadata.update(_digests(metadata, tensors))  # of the tensors as stored, e.g. in float16
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, Any]]:
    """The raw tensors, config and meta of a checkpoint, checked against its digests.

    FileNotFoundError if missing; ValueError if it is not a checkpoint or no longer matches its digests.
    """
    tensors, _, config, meta = _read(path, with_tensors=True)
    return tensors, config, meta


def read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """The config and meta of a checkpoint without reading its tensors (model cards, listings).

    The config and meta are checked against their digests (the tensors' digest is not: that needs
    the tensors). Same errors as `read_checkpoint`.
    """
    _, _, config, meta = _read(path, with_tensors=False)
    return config, meta


def checkpoint_digest(path: str | os.PathLike, verify: bool = False) -> str:
    """A SHA-256 (hex) naming the model a checkpoint holds, to key caches of its outputs on.

    It covers the model config (canonical JSON: sorted keys) and the weights digest, not `meta`:
    re-exporting a model with other metrics or notes keeps it; changing `alpha` or one weight
    changes it. The recorded weights digest is used as is (only the config and meta are read and
    checked) unless `verify`, which reads the tensors and checks them too, as `load_checkpoint`
    does; a file without digests has its tensors read and digested. Same errors as `read_checkpoint`.
    """
    _, metadata, config, _ = _read(path, with_tensors=False)
    weights = metadata.get(DIGEST_KEYS["weights"])
    if verify or weights is None:
        tensors, _, _, _ = _read(path, with_tensors=True)
        weights = weights_digest(tensors)
    canonical = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(f"{canonical}\n{weights}\n".encode()).hexdigest()


def stamp_checkpoint(path: str | os.PathLike) -> Path:
    """Add digests to a checkpoint written before they existed, changing nothing else.

    The tensors and every metadata string are written back unchanged, atomically. The digests
    vouch for the file as it is now. A file that already has digests is checked, not rewritten.
    """
    tensors, metadata, _, _ = _read(path, with_tensors=True)
    if all(key in metadata for key in DIGEST_KEYS.values()):
        return Path(path)
    stamped = {"meta": "{}", **metadata}
    stamped.update(_digests(stamped, tensors))
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=stamped))


def _read(
    path: str | os.PathLike, with_tensors: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str], ModelConfig, dict[str, Any]]:
    """Tensors (empty unless `with_tensors`), raw metadata, config and meta, checked."""
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
    _verify(path, metadata, tensors if with_tensors else None)
    try:
        config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} has an invalid model config: {reason}") from None
    return tensors, metadata, config, meta


def _verify(path: Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor] | None) -> None:
    """Check the metadata strings (and the tensors, when given) against the recorded digests."""
    recorded = [key for key in DIGEST_KEYS.values() if key in metadata]
    if not recorded:
        key = str(path.resolve())
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{path} has no digests (written before they existed): read unverified; "
                          "diablo.checkpoint.stamp_checkpoint adds them", UnverifiedCheckpointWarning, stacklevel=4)
        return
    if len(recorded) < len(DIGEST_KEYS):
        missing = sorted(set(DIGEST_KEYS.values()) - set(recorded))
        raise ValueError(f"{path} was modified after it was saved: digest {', '.join(missing)} removed")
    for field in ("model_config", "meta"):
        text = metadata.get(field)
        if text is None or text_digest(text) != metadata[DIGEST_KEYS[field]]:
            raise ValueError(f"{path} was modified after it was saved: its {field} metadata no longer matches "
                             f"its {DIGEST_KEYS[field]} digest")
    if tensors is not None and weights_digest(tensors) != metadata[DIGEST_KEYS["weights"]]:
        raise ValueError(f"{path} was modified after it was saved: its tensors no longer match "
                         f"its {DIGEST_KEYS['weights']} digest")


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "auto"
) -> tuple[DiabloNet, ModelConfig, dict[str, Any]]:
    """Rebuild the model from the stored config, after checking the file against its digests;
    never reads backbone weights."""
    target = resolve_device(device)
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
    return model.to(target).eval(), config, meta
