"""`python -m diablo.train`: the paper's training protocol (§3.5, §4.2), single process or torchrun.

Each epoch: `steps_per_epoch` class-balanced batches, the metric loss on the batch's cosine
similarities, Adam; then Recall@K (and MAP@R, NMI) on the held-out classes, and DIR/last and
DIR/best (by R@1) written atomically, with a line in DIR/metrics.jsonl. DIR/train_state holds
what `--resume DIR` needs beyond the weights: the optimiser's moments. The sampler and the
augmentations are seeded per epoch from (seed, epoch, rank), so a resumed run draws the same
batches as an uninterrupted one; a run killed mid-epoch restarts that epoch.
Multi-GPU / multi-node: `torchrun --nproc_per_node=G -m diablo.train ...` (DistributedDataParallel,
nccl on GPU, gloo on CPU); rank 0 evaluates and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from diablo.checkpoint import read_checkpoint, resolve_device, save_checkpoint
from diablo.config import PRESETS, TrainConfig
from diablo.data import build_transform, k_list, load_dataset
from diablo.data.subset import ClassSubset, split_classes
from diablo.dictionary import start_dictionary
from diablo.evaluation import embed, evaluate
from diablo.files import atomic_write
from diablo.losses import build_loss
from diablo.model import DiabloNet, build_model
from diablo.samplers import ClassBalancedSampler

FLAG_NAMES = {"num_entries": "entries"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- data


def dataset(config: TrainConfig, split: str, train: bool) -> Any:
    """One split, limited to `max_per_class` images of each class when set."""
    transform = build_transform(train=train, image_size=config.image_size)
    data = load_dataset(config.dataset, split=split, root=config.root, transform=transform)
    return ClassSubset(data, per_class=config.max_per_class) if config.max_per_class else data


def evaluation_sets(config: TrainConfig) -> tuple[Any, Any | None]:
    """(queries, gallery or None): validation classes, or the test split (In-Shop: query vs gallery)."""
    if config.val_fraction > 0:
        full = dataset(config, "train", train=False)
        _, held = split_classes(full.labels, config.val_fraction, config.seed)
        return ClassSubset(full, held), None
    if config.dataset == "inshop":
        return dataset(config, "query", train=False), dataset(config, "gallery", train=False)
    return dataset(config, "test", train=False), None


def training_set(config: TrainConfig, train: bool = True) -> Any:
    """The training classes (without the validation ones), with the training or the test transform."""
    data = dataset(config, "train", train=train)
    if config.val_fraction > 0:
        kept, _ = split_classes(data.labels, config.val_fraction, config.seed)
        return ClassSubset(data, kept)
    return data


def measure(model: DiabloNet, queries: Any, gallery: Any | None, config: TrainConfig, device: torch.device) -> dict:
    """Recall@K (the dataset's K list), MAP@R and NMI of `model` on an evaluation set."""
    kw = dict(batch_size=config.batch_size_eval, device=device, num_workers=config.workers, progress=config.progress)
    emb, labels = embed(model, queries, **kw)
    ks = k_list(config.dataset)
    with_nmi = config.dataset != "sop"  # k-means into 11k clusters takes longer than the epoch
    if gallery is None:
        return evaluate(emb, labels, ks, with_nmi=with_nmi)
    g_emb, g_labels = embed(model, gallery, **kw)
    return evaluate(emb, labels, ks, gallery=g_emb, gallery_labels=g_labels, with_nmi=with_nmi)


# ----------------------------------------------------------------------------- state


def optimiser(model: DiabloNet, config: TrainConfig) -> torch.optim.Adam:
    """Adam; the new parts (dictionary, alpha, embedding layers) at lr * new_lr_factor."""
    new = [p for m in (model.selection, model.embedding) if m is not None for p in m.parameters()]
    new_ids = {id(p) for p in new}
    pretrained = [p for p in model.parameters() if id(p) not in new_ids]
    return torch.optim.Adam(
        [{"params": pretrained, "lr": config.lr}, {"params": new, "lr": config.lr * config.new_lr_factor}],
        weight_decay=config.weight_decay,
    )


def save_train_state(path: Path, opt: torch.optim.Optimizer, epoch: int, step: int) -> None:
    """Optimiser moments as safetensors (no pickle), the rest as JSON metadata."""
    state = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.detach().cpu().contiguous() for i, s in state["state"].items() for k, v in s.items()}
    meta = {"param_groups": json.dumps(state["param_groups"]), "epoch": str(epoch), "step": str(step)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_train_state(path: Path, opt: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore the optimiser; returns (epochs done, steps done) when it was saved."""
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as file:
        meta = file.metadata()
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            moments.setdefault(int(index), {})[key] = value
    opt.load_state_dict({"state": moments, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["epoch"]), int(meta["step"])


# ----------------------------------------------------------------------------- loop


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run `config`; returns the last epoch's record. Resuming continues from config.out/last."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(config.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    model_config = config.model_config()
    model = build_model(model_config, load_pretrained=not resume).to(device)
    opt = optimiser(model, config)
    epoch, step, history = 0, 0, []
    if resume:
        tensors, _, meta = read_checkpoint(out / "last.safetensors")
        model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
        saved_epoch, _ = load_train_state(out / "train_state.safetensors", opt)
        epoch, step, history = meta["epoch"], meta["step"], meta.get("history", [])
        if saved_epoch != epoch:  # killed between the two writes of an epoch's end
            warnings.warn(f"{out}: optimiser state of epoch {saved_epoch}, weights of epoch {epoch}; continuing",
                          stacklevel=2)

    if not resume:
        start_dictionary(model, config.dictionary_init, lambda: training_set(config, train=False), seed=config.seed,
                         progress=config.progress)
    train_set = training_set(config)
    sampler = ClassBalancedSampler(train_set.labels, config.classes_per_batch, config.images_per_class,
                                   batches_per_epoch=config.steps_per_epoch, seed=config.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
    queries, gallery = evaluation_sets(config) if rank == 0 else (None, None)
    loss_fn = build_loss(config.loss)
    net: nn.Module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else model
    commit = git_commit()  # the code this run started with
    best = max((h.get("recall@1", -1.0) for h in history), default=-1.0)
    record: dict[str, Any] = history[-1] if history else {}

    while epoch < config.epochs and not (config.max_steps and step >= config.max_steps):
        sampler.set_epoch(epoch)
        torch.manual_seed(config.seed + 1000 * epoch + rank)  # augmentations: the same after a resume
        net.train()
        start, losses = time.perf_counter(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress or rank != 0,
                   leave=False)
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
                z = net(images)
            loss = loss_fn(z.float(), labels)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped. The last good "
                    f"checkpoint is kept at {out / 'last.safetensors'}; lower --lr or check the data."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if config.max_steps and step >= config.max_steps:
                break
        epoch += 1
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "step": step, "loss": sum(losses) / max(len(losses), 1), "time_s": seconds,
                  "images_per_s": len(losses) * sampler.classes_per_batch * sampler.images_per_class / seconds}
        if rank == 0:
            last = epoch >= config.epochs or bool(config.max_steps and step >= config.max_steps)
            if epoch % config.eval_every == 0 or last:
                record.update(measure(model, queries, gallery, config, device))
            history.append(record)
            meta = {"train_config": config.to_dict(), "epoch": epoch, "step": step, "history": history,
                    "git_commit": commit, "evaluated_on": "validation" if config.val_fraction else "test"}
            save_train_state(out / "train_state.safetensors", opt, epoch, step)
            save_checkpoint(out / "last.safetensors", model, model_config, meta)
            if record.get("recall@1", -1.0) > best:
                best = record["recall@1"]
                save_checkpoint(out / "best.safetensors", model, model_config, meta)
            with open(out / "metrics.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            summary = " ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float))
            tqdm.write(f"epoch {epoch}: {summary}", file=sys.stderr)
        if distributed:
            dist.barrier()
    if distributed:
        dist.destroy_process_group()
    return record


# ----------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    """Flags built from TrainConfig's fields; all default to None so that given flags are known."""
    p = argparse.ArgumentParser(prog="python -m diablo.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings for a dataset (or 'demo')")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from DIR/last.safetensors")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + FLAG_NAMES.get(field.name, field.name).replace("_", "-")
        kind = hints[field.name]
        if kind is bool:
            p.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"default: {field.default}")
        else:
            convert = int if kind is int else float if kind is float else str
            p.add_argument(flag, dest=field.name, type=convert, default=None, help=f"default: {field.default}")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    p = parser()
    args = vars(p.parse_args(argv))
    preset, resume = args.pop("preset"), args.pop("resume")
    given = {k: v for k, v in args.items() if v is not None}
    try:
        if resume:
            last = Path(resume) / "last.safetensors"
            stored = read_checkpoint(last)[2].get("train_config")
            if stored is None:
                p.error(f"{last} holds no training config to resume from")
            return TrainConfig(**{**stored, **given, "out": resume}), True
        return TrainConfig(**{**PRESETS.get(preset, {}), **given}), False
    except (ValueError, TypeError, FileNotFoundError) as error:
        p.error(str(error))
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    config, resume = config_from_args(argv)
    try:
        record = train(config, resume=resume)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics = {k: round(v, 4) for k, v in record.items() if isinstance(v, float) and not math.isnan(v)}
    print(json.dumps({"out": config.out, **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
