"""The learning-rate schedule: a pure function of the optimiser step, so its only state is the step
(committed with every epoch; a resumed run continues the same curve).

- "constant": the peak rate throughout (the paper's Adam at 1e-5, §3.5).
- "cosine": a linear warm-up from 0 to the peak over `warmup_steps`, then a cosine decay from the
  peak to `min_lr_factor` x peak at the last step (Loshchilov and Hutter, SGDR, 2017, without restarts).
Every parameter group keeps its own peak (the backbone's `lr`, the new parts' `lr * new_lr_factor`,
and the dictionary's, when `dictionary_lr_factor` gives it a group, that times the factor).
"""

from __future__ import annotations

import math

import torch

from diablo.config import TrainConfig

__all__ = ["apply_schedule", "lr_factor", "peaks", "total_steps"]


def total_steps(config: TrainConfig) -> int:
    """The run's length in optimiser steps: epochs x steps per epoch, capped by max_steps."""
    steps = config.epochs * config.steps_per_epoch
    return min(steps, config.max_steps) if config.max_steps else steps


def lr_factor(config: TrainConfig, step: int) -> float:
    """The multiplier of each group's peak rate for optimiser step `step` (0-based)."""
    if config.schedule == "constant":
        return 1.0
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay = max(total_steps(config) - config.warmup_steps - 1, 1)
    progress = min((step - config.warmup_steps) / decay, 1.0)
    floor = config.min_lr_factor
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def peaks(config: TrainConfig, groups: int) -> tuple[float, ...]:
    """The peak rates of the optimiser's `groups` groups: the backbone's, the new parts', and (a
    third group) the dictionary's lr * new_lr_factor * dictionary_lr_factor."""
    new = config.lr * config.new_lr_factor
    return (config.lr, new, new * config.dictionary_lr_factor)[:groups]


def apply_schedule(opt: torch.optim.Optimizer, config: TrainConfig, step: int) -> None:
    """Set the rates of step `step` in the optimiser's groups (backbone, new parts, and the
    dictionary when it has its own group) and the config's weight decay, so that what a run
    records is what the optimiser uses."""
    factor = lr_factor(config, step)
    for group, peak in zip(opt.param_groups, peaks(config, len(opt.param_groups)), strict=True):
        group["lr"] = peak * factor
        group["weight_decay"] = config.weight_decay
