"""Where the lab looks and what it runs on, from the environment.

    DIABLO_CHECKPOINTS    folder listed by the checkpoint picker (default: the repository's checkpoints/)
    DIABLO_CACHE          cache root (default ~/.cache/diablo); the lab writes under <root>/lab
    DIABLO_SYNTHETIC      JSON parameters of the default synthetic gallery, e.g.
                          '{"num_classes": 6, "images_per_class": 4, "resolution": 64}'
    DIABLO_TORCH_THREADS  torch's CPU threads in the app (default 1, see `torch_threads`)
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = "demo-pre-dimension.safetensors"


def checkpoint_dir() -> Path:
    """$DIABLO_CHECKPOINTS, else the repository's checkpoints/."""
    return Path(os.environ.get("DIABLO_CHECKPOINTS") or REPO / "checkpoints").expanduser()


def cache_dir() -> Path:
    """$DIABLO_CACHE/lab, else ~/.cache/diablo/lab."""
    root = os.environ.get("DIABLO_CACHE")
    return (Path(root) if root else Path("~/.cache/diablo")).expanduser() / "lab"


def synthetic_options() -> dict[str, int]:
    """Parameters of the default synthetic gallery: load_synthetic's defaults (the set the demo
    checkpoints were trained and tested on), updated from $DIABLO_SYNTHETIC."""
    from diablo.data.synthetic import load_synthetic

    defaults = inspect.signature(load_synthetic).parameters
    options = {name: int(defaults[name].default) for name in ("num_classes", "images_per_class", "resolution")}
    raw = os.environ.get("DIABLO_SYNTHETIC")
    if raw:
        try:
            options.update({str(k): int(v) for k, v in json.loads(raw).items()})
        except (ValueError, TypeError, AttributeError):
            pass  # a malformed variable keeps the defaults
    return options


def device() -> str:
    """The device models run on: cuda if available (then mps), else cpu."""
    from diablo.checkpoint import resolve_device

    return str(resolve_device("auto"))


def torch_threads() -> int:
    """CPU threads for torch in the app: $DIABLO_TORCH_THREADS, else 1.

    One thread by default: the app runs one image at a time next to Streamlit's own threads
    (and a background UMAP), and on this project's two shared cores torch's default of one
    OpenMP thread per core made a single 128 px forward pass take 2.4 s instead of 30 ms
    (threads spinning against the other load). Raise it on a dedicated machine for faster
    gallery embedding.
    """
    try:
        return max(1, int(os.environ.get("DIABLO_TORCH_THREADS", "1")))
    except ValueError:
        return 1
