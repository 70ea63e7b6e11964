"""`python -m diablo.train`: the paper's training protocol (§3.5, §4.2), single process or torchrun.

Epoch 0 is the model before any step (pretrained backbone, the dictionary's start), evaluated like
every later epoch, so that `best` can be "no training" when training does not help. Each epoch:
`steps_per_epoch` class-balanced batches, the metric loss on the batch's cosine similarities, Adam
at the rates of diablo.schedule; then Recall@K (and MAP@R, NMI) on the held-out classes, and the
epoch committed to DIR as one atomic step (diablo.run_directory: last, best by Recall@1,
train_state, metrics.jsonl). The sampler and the augmentations are seeded per epoch from (seed,
epoch, rank), so a resumed run draws the same batches as an uninterrupted one; a run killed
mid-epoch restarts that epoch.
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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from diablo.arguments import one_line
from diablo.checkpoint import read_checkpoint, resolve_device
from diablo.config import CHOICES, HELP, PRESETS, TrainConfig
from diablo.data import build_transform, k_list, load_dataset
from diablo.data.subset import ClassSubset, split_classes
from diablo.data.synthetic import load_further_groups
from diablo.dictionary import start_dictionary
from diablo.evaluation import embed, evaluate, without_positive
from diablo.losses import build_loss
from diablo.model import DiabloNet, build_model
from diablo.run_directory import Manifest, RunDirectory, RunDirectoryError, load_optimiser
from diablo.samplers import ClassBalancedSampler
from diablo.schedule import apply_schedule, peaks

FLAG_NAMES = {"num_entries": "entries"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@cache
def git_commit() -> str:
    """The commit of the code this process runs (read once)."""
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
    """(queries, gallery or None): validation classes (held-out training classes, or further
    synthetic groups), or the test split (In-Shop: query vs gallery)."""
    if config.val_groups:
        transform = build_transform(train=False, image_size=config.image_size)
        further = load_further_groups(config.val_groups, root=config.root, transform=transform)
        return (ClassSubset(further, per_class=config.max_per_class) if config.max_per_class else further), None
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
    """Recall@K (the dataset's K list), MAP@R and NMI of `model` on an evaluation set, with what they
    were computed on: the images evaluated, the unreadable files skipped, the queries without a positive."""
    kw = dict(batch_size=config.batch_size_eval, device=device, num_workers=config.workers, progress=config.progress)
    emb, labels = embed(model, queries, **kw)
    ks = k_list(config.dataset)
    with_nmi = config.dataset != "sop"  # k-means into 11k clusters takes longer than the epoch
    sets = [queries] if gallery is None else [queries, gallery]
    counts = {"images": sum(len(s) for s in sets), "skipped": sum(len(getattr(s, "skipped", [])) for s in sets)}
    if gallery is None:
        counts["without_positive"] = without_positive(labels)
        return {**evaluate(emb, labels, ks, with_nmi=with_nmi), **counts}
    g_emb, g_labels = embed(model, gallery, **kw)
    counts["without_positive"] = without_positive(labels, g_labels)
    return {**evaluate(emb, labels, ks, gallery=g_emb, gallery_labels=g_labels, with_nmi=with_nmi), **counts}


# ----------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Job:
    """Where this process trains: its device, and its rank in a torchrun job (0 alone)."""

    device: torch.device
    rank: int = 0
    distributed: bool = False

    @classmethod
    def start(cls, config: TrainConfig) -> Job:
        """Join the torchrun job if there is one (nccl on GPU, gloo on CPU)."""
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        device = resolve_device(config.device)
        if distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda" and distributed:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        return cls(device, dist.get_rank() if distributed else 0, distributed)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def optimiser(model: DiabloNet, config: TrainConfig) -> torch.optim.Adam:
    """Adam; the new parts (dictionary, alpha, embedding layers) at lr * new_lr_factor, and the
    dictionary in a third group at that rate x dictionary_lr_factor when that factor is not 1
    (diablo.schedule.peaks gives each group's rate)."""
    new = [p for m in (model.selection, model.embedding) if m is not None for p in m.parameters()]
    own = [model.dictionary] if config.dictionary_lr_factor != 1 and model.dictionary is not None else []
    new_ids, own_ids = {id(p) for p in new}, {id(p) for p in own}
    groups = [[p for p in model.parameters() if id(p) not in new_ids], [p for p in new if id(p) not in own_ids]]
    groups += [own] if own else []
    rates = peaks(config, len(groups))
    return torch.optim.Adam([{"params": g, "lr": r} for g, r in zip(groups, rates, strict=True)],
                            weight_decay=config.weight_decay)


def restore(config: TrainConfig, run: RunDirectory, resume: bool, job: Job
            ) -> tuple[DiabloNet, torch.optim.Adam, Manifest]:
    """The model and optimiser at the committed epoch (resume), or at the start: pretrained
    backbone, the dictionary's start (diablo.dictionary), an empty manifest."""
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(), load_pretrained=not resume).to(job.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optimiser(model, config)
    if not resume:
        start_dictionary(model, config.dictionary_init, lambda: training_set(config, train=False), seed=config.seed,
                         progress=config.progress)
        return model, opt, Manifest()
    manifest = run.manifest()
    tensors, _, _ = read_checkpoint(run.weights(manifest.epoch))
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    load_optimiser(run.state(manifest.epoch), opt)
    return model, opt, manifest


def train_epoch(net: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, loss_fn: nn.Module,
                config: TrainConfig, manifest: Manifest, job: Job) -> dict[str, Any]:
    """One epoch of class-balanced batches; returns its row of the history (without metrics)."""
    epoch, step = manifest.epoch + 1, manifest.step
    loader.batch_sampler.set_epoch(manifest.epoch)
    torch.manual_seed(config.seed + 1000 * manifest.epoch + job.rank)  # augmentations: the same after a resume
    net.train()
    start, losses = time.perf_counter(), []
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress or job.rank != 0,
               leave=False)
    for images, labels in bar:
        images, labels = images.to(job.device, non_blocking=True), labels.to(job.device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), NHWC in memory
        apply_schedule(opt, config, step)
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=config.amp):
            z = net(images)  # (B, D)
        loss = loss_fn(z.float(), labels)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss.item()} at epoch {epoch}, step {step + 1}; stopped. The last good checkpoint "
                f"is kept at {Path(config.out) / 'last.safetensors'}; lower --lr or check the data.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if config.max_steps and step >= config.max_steps:
            break
    seconds = time.perf_counter() - start
    images_seen = len(losses) * config.classes_per_batch * config.images_per_class
    return {"epoch": epoch, "step": step, "loss": sum(losses) / max(len(losses), 1),
            "lr": opt.param_groups[0]["lr"], "time_s": seconds, "images_per_s": images_seen / seconds}


def finished(config: TrainConfig, manifest: Manifest) -> bool:
    return manifest.epoch >= config.epochs or bool(config.max_steps and manifest.step >= config.max_steps)


def end_epoch(row: dict[str, Any], model: DiabloNet, opt: torch.optim.Optimizer, manifest: Manifest,
              run: RunDirectory, evaluation: tuple[Any, Any | None], config: TrainConfig, job: Job) -> None:
    """Evaluate when due (always at epoch 0 and at the end), then commit the epoch (rank 0)."""
    manifest.epoch, manifest.step = row["epoch"], row["step"]
    if row["epoch"] == 0 or row["epoch"] % config.eval_every == 0 or finished(config, manifest):
        row.update(measure(model, *evaluation, config, job.device))
    manifest.record(row)
    meta = {"train_config": config.to_dict(), "epoch": manifest.epoch, "step": manifest.step,
            "history": manifest.history, "best_epoch": manifest.best_epoch, "git_commit": git_commit(),
            "evaluated_on": "validation" if config.validates else "test"}
    run.commit(manifest, model, config.model_config(), meta, opt)
    summary = " ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
    if "images" in row:
        summary += f" ({row['images']} images evaluated, {row['skipped']} unreadable skipped, " \
                   f"{row['without_positive']} queries without a positive)"
    tqdm.write(f"epoch {row['epoch']}: {summary}", file=sys.stderr)


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run `config` into config.out (diablo.run_directory); returns the last epoch's row.

    A new run refuses a directory that holds one unless `overwrite`; `resume` continues the
    committed epoch. Epoch 0 is the model before any step, evaluated like every other epoch.
    """
    job = Job.start(config)
    run = RunDirectory(config.out)
    if job.rank == 0:
        run.recover() if resume else run.start(overwrite)
    job.barrier()
    model, opt, manifest = restore(config, run, resume, job)
    evaluation = evaluation_sets(config) if job.rank == 0 else (None, None)
    if not resume and job.rank == 0:
        end_epoch({"epoch": 0, "step": 0}, model, opt, manifest, run, evaluation, config, job)
    train_set = training_set(config)
    sampler = ClassBalancedSampler(train_set.labels, config.classes_per_batch, config.images_per_class,
                                   batches_per_epoch=config.steps_per_epoch, seed=config.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.workers,
                        pin_memory=job.device.type == "cuda", persistent_workers=config.workers > 0)
    net: nn.Module = DistributedDataParallel(model, device_ids=[job.device.index] if job.device.type == "cuda"
                                             else None) if job.distributed else model
    loss_fn = build_loss(config.loss)
    while not finished(config, manifest):
        row = train_epoch(net, loader, opt, loss_fn, config, manifest, job)
        if job.rank == 0:
            end_epoch(row, model, opt, manifest, run, evaluation, config, job)
        else:
            manifest.epoch, manifest.step = row["epoch"], row["step"]
        job.barrier()
    if job.distributed:
        dist.destroy_process_group()
    return manifest.history[-1] if manifest.history else {}


# ----------------------------------------------------------------------------- CLI

# What a resumed run may change: how long it runs, the optimiser's rates, how it evaluates and where
# it computes. Everything else (the model, the data, the batches) would make the run another one.
RESUMABLE = frozenset({"epochs", "steps_per_epoch", "max_steps", "lr", "new_lr_factor", "weight_decay",
                       "schedule", "warmup_steps", "min_lr_factor", "eval_every", "workers", "batch_size_eval",
                       "device", "amp", "channels_last", "progress"})


def flag(name: str) -> str:
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


def parser() -> argparse.ArgumentParser:
    """Flags built from TrainConfig's fields (help and choices from diablo.config); all default to
    None so that the flags a user gave are known."""
    p = argparse.ArgumentParser(prog="python -m diablo.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="the paper's settings for a dataset (or 'demo')")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last committed epoch; "
                   "flags given with it change only what a run can change (length, rates, evaluation, device)")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out already holds")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind, help_text = hints[field.name], f"{HELP.get(field.name, '')} (default: {field.default})"
        if kind is bool:
            p.add_argument(flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
        else:
            convert = int if kind is int else float if kind is float else str
            p.add_argument(flag(field.name), dest=field.name, type=convert, default=None,
                           choices=CHOICES.get(field.name), help=help_text)
    return p


def resumed_config(p: argparse.ArgumentParser, directory: str, given: dict[str, Any]) -> TrainConfig:
    """The stored config of the run in `directory` with the given flags that a resume may change;
    any other flag that differs from the run's is refused."""
    stored = RunDirectory(directory).train_config()
    fixed = sorted(k for k, v in given.items() if k not in RESUMABLE and stored.get(k) != v)
    if fixed:
        shown = ", ".join(f"{flag(k)} (the run has {stored.get(k)!r})" for k in fixed)
        p.error(f"{shown} cannot change on --resume; start a new run with another --out")
    return TrainConfig(**{**stored, **given, "out": directory})


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """(config, resume) of a command line; usage errors exit with status 2 and one line."""
    config, resume, _ = parse(argv)
    return config, resume


def parse(argv: list[str] | None = None) -> tuple[TrainConfig, bool, bool]:
    """(config, resume, overwrite) of a command line, checked before any work starts."""
    p = parser()
    args = vars(p.parse_args(argv))
    preset, resume, overwrite = args.pop("preset"), args.pop("resume"), args.pop("overwrite")
    given = {k: v for k, v in args.items() if v is not None}
    if resume and (overwrite or preset):
        p.error("--resume continues a run as it was; it takes neither --overwrite nor --preset")
    try:
        config = resumed_config(p, resume, given) if resume else TrainConfig(**{**PRESETS.get(preset, {}), **given})
        resolve_device(config.device)
    except (ValueError, TypeError, FileNotFoundError) as error:
        p.error(str(error))
    return config, bool(resume), overwrite


def main(argv: list[str] | None = None) -> int:
    config, resume, overwrite = parse(argv)
    try:
        record = train(config, resume=resume, overwrite=overwrite)
    except (RunDirectoryError, FileNotFoundError) as error:  # what the user named is not usable
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except (TrainingDiverged, ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    manifest = RunDirectory(config.out).manifest()
    if manifest.best_epoch == 0 and manifest.epoch > 0:
        start = manifest.history[0]
        print(f"warning: training did not beat its start: the untrained model (epoch 0, Recall@1 "
              f"{start['recall@1']:.4f}) scored best; best.safetensors is that model", file=sys.stderr)
    metrics = {k: round(v, 4) for k, v in record.items() if isinstance(v, float) and not math.isnan(v)}
    print(json.dumps({"out": config.out, **metrics, "best_epoch": manifest.best_epoch}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
