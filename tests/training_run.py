"""The tiny training run of tests/test_train.py and tests/test_protocol.py: the folder dataset is the
`folder` fixture of tests/conftest.py; `flags` are the command-line flags of a run on it."""

from __future__ import annotations

from pathlib import Path


def flags(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "folder", "--root", str(folder), "--backbone", "mobilenet_v2", "--pretrained", "none",
            "--attention", "pre", "--selection", "dimension", "--entries", "2", "--embedding-dim", "16",
            "--image-size", "32", "--classes-per-batch", "2", "--images-per-class", "3", "--epochs", "2",
            "--steps-per-epoch", "2", "--workers", "0", "--lr", "1e-4", "--no-progress", "--out", str(out), *extra]
