"""The run directory of `python -m diablo.train --out DIR`, committed one whole epoch at a time.

    DIR/run.json                      the manifest: epoch, step, best epoch, history; replaced last
    DIR/epochs/NNNN.safetensors       the weights of epoch NNNN (a diablo checkpoint; never rewritten)
    DIR/epochs/NNNN.state.safetensors its optimiser moments (safetensors + JSON, no pickle)
    DIR/last.safetensors              = epochs/<epoch>        (hard links, re-derived from run.json)
    DIR/best.safetensors              = epochs/<best epoch>
    DIR/train_state.safetensors       = epochs/<epoch>.state
    DIR/metrics.jsonl                 the history, one JSON line per epoch (rewritten from run.json)

An epoch's end writes its two epoch files, then replaces run.json (the commit point), then
derives the rest and deletes epoch files that neither `last` nor `best` needs. A process killed
at any moment therefore leaves either the previous epoch committed or this one; `open` on the
next start removes temporary files of killed writes and uncommitted epoch files and derives
`last`, `best`, `train_state` and `metrics.jsonl` again from run.json, so they always agree with
it, and `best` is never older than the best epoch of the history.
A directory written before run.json existed (last, best, train_state) is migrated to it on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diablo.checkpoint import read_metadata, save_checkpoint
from diablo.config import ModelConfig
from diablo.files import atomic_write, atomic_write_bytes
from diablo.model import DiabloNet

__all__ = ["RunDirectory", "RunDirectoryError", "Manifest", "load_optimiser", "save_optimiser"]

MANIFEST = "run.json"
DERIVED = ("last.safetensors", "best.safetensors", "train_state.safetensors", "metrics.jsonl")
FORMAT = 1


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (one line, names the way out)."""


@dataclass
class Manifest:
    """What run.json records: the committed epoch and the whole metrics history."""

    epoch: int = 0
    step: int = 0
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def best_score(self) -> float:
        """Recall@1 of the best epoch, -1 when no epoch was evaluated yet."""
        return max((h.get("recall@1", -1.0) for h in self.history), default=-1.0)

    def record(self, row: dict[str, Any]) -> None:
        """Add an epoch's row; it becomes the best when its Recall@1 beats every earlier one."""
        if row.get("recall@1", -1.0) > self.best_score():
            self.best_epoch = row["epoch"]
        self.history.append(row)
        self.epoch, self.step = row["epoch"], row["step"]


def save_optimiser(path: Path, opt: torch.optim.Optimizer, epoch: int, step: int) -> None:
    """Optimiser moments as safetensors (no pickle), the param groups as JSON metadata."""
    state = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, s in state["state"].items() for k, v in s.items()}
    meta = {"param_groups": json.dumps(state["param_groups"]), "epoch": str(epoch), "step": str(step)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_optimiser(path: Path, opt: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore the optimiser saved by `save_optimiser`; returns (epoch, step). One-line ValueError
    for a file that is missing, truncated or not an optimiser state."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as file:
            meta = file.metadata() or {}
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            _, index, key = name.split(".", 2)
            moments.setdefault(int(index), {})[key] = value
        opt.load_state_dict({"state": moments, "param_groups": json.loads(meta["param_groups"])})
        return int(meta["epoch"]), int(meta["step"])
    except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirectoryError(f"{path}: not a readable optimiser state ({reason})") from None


class RunDirectory:
    """The files of one training run (module docstring); only rank 0 of a job writes them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def weights(self, epoch: int) -> Path:
        return self.path / "epochs" / f"{epoch:04d}.safetensors"

    def state(self, epoch: int) -> Path:
        return self.path / "epochs" / f"{epoch:04d}.state.safetensors"

    # ------------------------------------------------------------------ what is there

    def holds_run(self) -> bool:
        """True when DIR holds a run (committed, or written before run.json existed)."""
        return (self.path / MANIFEST).is_file() or (self.path / "last.safetensors").is_file()

    def manifest(self) -> Manifest:
        """The committed manifest (run.json)."""
        file = self.path / MANIFEST
        if not file.is_file():
            raise RunDirectoryError(f"{self.path} holds no run to resume (no {MANIFEST}, no last.safetensors)")
        try:
            data = json.loads(file.read_text())
            return Manifest(data["epoch"], data["step"], data["best_epoch"], data["history"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise RunDirectoryError(f"{file} is damaged ({error}); start a new run with --overwrite") from None

    def train_config(self) -> dict[str, Any]:
        """The training config recorded with the committed epoch."""
        epoch = self.manifest().epoch if (self.path / MANIFEST).is_file() else None
        _, meta = read_metadata(self.path / "last.safetensors" if epoch is None else self.weights(epoch))
        stored = meta.get("train_config")
        if not isinstance(stored, dict):
            raise RunDirectoryError(f"{self.path} records no training config to resume from")
        return stored

    def migrate(self) -> None:
        """Give a run written before run.json (last, best, train_state) its epoch files and manifest."""
        _, meta = read_metadata(self.path / "last.safetensors")
        manifest = Manifest(history=list(meta.get("history", [])), epoch=meta["epoch"], step=meta["step"])
        self.link_into(self.path / "last.safetensors", self.weights(manifest.epoch))
        self.link_into(self.path / "train_state.safetensors", self.state(manifest.epoch))
        best = self.path / "best.safetensors"
        if best.is_file():
            manifest.best_epoch = read_metadata(best)[1]["epoch"]  # the best that was kept, whatever the history says
            self.link_into(best, self.weights(manifest.best_epoch))
        self.write_manifest(manifest)

    # ------------------------------------------------------------------ start

    def check_writable(self) -> None:
        """Create DIR and prove a file can be written in it, before any work is done."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"--out {self.path} is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise RunDirectoryError(f"cannot write in --out {self.path}: {error.strerror or error}") from None

    def start(self, overwrite: bool = False) -> None:
        """Prepare DIR for a new run: refused when it holds one, unless `overwrite` (which removes
        that run's files, and nothing else of DIR)."""
        self.check_writable()
        if self.holds_run():
            if not overwrite:
                raise RunDirectoryError(
                    f"--out {self.path} already holds a run; continue it with --resume {self.path} "
                    f"or replace it with --overwrite")
            for name in (MANIFEST, *DERIVED):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "epochs", ignore_errors=True)
        self.remove_debris()

    def recover(self) -> Manifest:
        """After a kill: drop temporary and uncommitted files, derive the rest from the manifest."""
        self.check_writable()
        self.remove_debris()
        if not (self.path / MANIFEST).is_file() and (self.path / "last.safetensors").is_file():
            self.migrate()
        manifest = self.manifest()
        self.derive(manifest)
        self.prune(manifest)
        return manifest

    def remove_debris(self) -> None:
        """Temporary files of writes that a kill interrupted (`.NAME.*.tmp`, see diablo.files)."""
        for folder in (self.path, self.path / "epochs"):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ an epoch's end

    def commit(self, manifest: Manifest, model: DiabloNet, config: ModelConfig, meta: dict[str, Any],
               opt: torch.optim.Optimizer) -> None:
        """Commit epoch `manifest.epoch`: its files, then run.json, then what derives from it."""
        epoch = manifest.epoch
        save_optimiser(self.state(epoch), opt, epoch, manifest.step)
        save_checkpoint(self.weights(epoch), model, config, meta)
        self.write_manifest(manifest)
        self.derive(manifest)
        self.prune(manifest)

    def write_manifest(self, manifest: Manifest) -> None:
        data = {"format": FORMAT, "epoch": manifest.epoch, "step": manifest.step, "best_epoch": manifest.best_epoch,
                "history": manifest.history}
        atomic_write_bytes(self.path / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())

    def prune(self, manifest: Manifest) -> None:
        """Delete the epoch files the manifest does not need (it needs the last epoch's two and the
        best epoch's weights), including those of an epoch that a kill left uncommitted."""
        keep = {self.weights(manifest.epoch), self.state(manifest.epoch)}
        if manifest.best_epoch is not None:
            keep.add(self.weights(manifest.best_epoch))
        for file in (self.path / "epochs").glob("*.safetensors"):
            if file not in keep:
                file.unlink()

    def derive(self, manifest: Manifest) -> None:
        """last, best, train_state and metrics.jsonl as the manifest says."""
        self.link(self.weights(manifest.epoch), "last.safetensors")
        self.link(self.state(manifest.epoch), "train_state.safetensors")
        if manifest.best_epoch is not None:
            self.link(self.weights(manifest.best_epoch), "best.safetensors")
        lines = "".join(json.dumps(row) + "\n" for row in manifest.history)
        atomic_write_bytes(self.path / "metrics.jsonl", lines.encode())

    def link(self, source: Path, name: str) -> None:
        """Point DIR/name at `source`."""
        self.link_into(source, self.path / name)

    @staticmethod
    def link_into(source: Path, target: Path) -> None:
        """Atomically make `target` the file `source` (a hard link; a copy where links are not allowed)."""
        if target.exists() and os.path.samefile(source, target):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.link.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
