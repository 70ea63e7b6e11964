"""Checkpoints: the files the picker lists, their model cards, and loaded models (cached)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from app.lab.errors import with_type
from app.lab.settings import checkpoint_dir, device, torch_threads


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file and its stamp (mtime, size): the cache key of everything derived from it."""

    path: str
    stamp: str

    @property
    def name(self) -> str:
        return Path(self.path).name.removesuffix(".safetensors")


def checkpoint_ref(path: str | os.PathLike[str]) -> CheckpointRef:
    """The ref of a checkpoint file; FileNotFoundError if `path` is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    stat = p.stat()
    return CheckpointRef(str(p.resolve()), f"{stat.st_mtime_ns}-{stat.st_size}")


def list_checkpoints() -> dict[str, Path]:
    """Every .safetensors file under `checkpoint_dir()`, by path relative to it, sorted."""
    folder = checkpoint_dir()
    if not folder.is_dir():
        return {}
    found = sorted(p for p in folder.rglob("*.safetensors") if p.is_file() and not p.name.startswith("."))
    return {p.relative_to(folder).as_posix(): p for p in found}


def image_size_of(meta: dict[str, Any]) -> int:
    """The square size test images are resized to: the training config's, else 224."""
    train = meta.get("train_config") or {}
    try:
        return int(train.get("image_size") or 224)
    except (TypeError, ValueError):
        return 224


@dataclass(frozen=True)
class Card:
    """What the sidebar's model card shows: the config and meta of a checkpoint (no weights read)."""

    ref: CheckpointRef
    config: Any  # diablo.ModelConfig
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return image_size_of(self.meta)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics history rows training stored (`meta['history']`), dicts only."""
        history = self.meta.get("history") or []
        return [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []


@st.cache_data(show_spinner=False, max_entries=64)
def _metadata(path: str, stamp: str) -> tuple[Any, dict[str, Any]]:
    from diablo.checkpoint import read_metadata

    return read_metadata(path)


def read_card(ref: CheckpointRef) -> Card:
    """The model card of a checkpoint; FileNotFoundError / ValueError if it is not one."""
    config, meta = _metadata(ref.path, ref.stamp)
    return Card(ref, config, meta if isinstance(meta, dict) else {})


@dataclass(frozen=True, eq=False)
class Loaded:
    """What `diablo.load_checkpoint` returned, and the lock that serialises the network's use.

    Sessions share a loaded network; attributions put hooks on it and switch its parameters'
    gradients, so every pass through it (inspection, attribution, gallery embedding) holds `lock`.
    """

    net: Any
    config: Any
    meta: dict[str, Any]
    lock: threading.RLock = field(default_factory=threading.RLock)


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=8)
def loaded(path: str, stamp: str, device_name: str) -> Loaded:
    """The cached network of a checkpoint file (key: path, stamp and device)."""
    import torch

    from diablo.checkpoint import load_checkpoint

    torch.set_num_threads(torch_threads())
    net, config, meta = load_checkpoint(path, device_name)
    return Loaded(net, config, meta if isinstance(meta, dict) else {})


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded checkpoint: the network (eval mode), its config and meta, and its lock."""

    ref: CheckpointRef
    net: Any  # diablo.DiabloNet
    config: Any  # diablo.ModelConfig
    meta: dict[str, Any]
    lock: Any  # threading.RLock: hold it while running `net`

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def image_size(self) -> int:
        return image_size_of(self.meta)

    @property
    def has_attention(self) -> bool:
        return self.config.attention != "none"

    @property
    def branches(self) -> int:
        return int(self.config.branches)

    @property
    def variant(self) -> str:
        return str(self.config.variant)


def load_model(ref: CheckpointRef) -> Model:
    """The cached model of `ref`; raises what diablo.load_checkpoint raises."""
    got = loaded(ref.path, ref.stamp, device())
    return Model(ref, got.net, got.config, got.meta, got.lock)


def try_load_model(path: str | os.PathLike[str]) -> tuple[Model | None, str | None]:
    """(model, None) or (None, a one-line reason): the app shows the reason instead of crashing."""
    try:
        return load_model(checkpoint_ref(path)), None
    except Exception as err:  # any failure to load is shown as a panel, the app keeps working
        return None, with_type(err)
