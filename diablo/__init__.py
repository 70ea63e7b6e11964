"""DIABLO: dictionary-based attention block for deep metric learning (Jacob et al., 2020).

The public API of docs/design.md §2. Heavy optional parts (data, evaluation) are imported lazily so
that `import diablo` stays fast.
"""

from __future__ import annotations

from typing import Any

from diablo.config import ModelConfig
from diablo.model import DiabloNet, Inspection, build_model

__version__ = "0.1.0"

_LAZY = {
    "build_loss": "diablo.losses",
    "save_checkpoint": "diablo.checkpoint",
    "load_checkpoint": "diablo.checkpoint",
    "load_dataset": "diablo.data",
    "embed": "diablo.evaluation",
    "recall_at_k": "diablo.evaluation",
    "TrainConfig": "diablo.config",
}

__all__ = ["DiabloNet", "Inspection", "ModelConfig", "build_model", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diablo' has no attribute {name!r}")
