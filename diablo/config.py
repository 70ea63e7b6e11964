"""Configuration dataclasses, serialised as JSON into every checkpoint.

Every field is checked when a config is made: a wrong type or value raises one ValueError line
that names the field, what it got and what it takes. `HELP` and `CHOICES` describe TrainConfig's
fields for command-line front ends.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diablo.backbones import MIN_IMAGE_SIZE

BACKBONES = ("googlenet", "mobilenet_v2")
ATTENTIONS = ("pre", "post", "none")
SELECTIONS = ("feature", "dimension")
LOSS_NAMES = ("contrastive", "triplet", "binomial")
DICTIONARY_INITS = ("random", "shared", "kmeans")
# Learning-rate schedules: "constant", or "cosine" (linear warm-up, then cosine decay to a floor).
SCHEDULES = ("constant", "cosine")
# diablo.data.DATASETS, copied here so that the config does not import the data modules
# (tests/test_config.py checks that the two tuples agree).
DATASETS = ("cub", "cars", "sop", "inshop", "folder", "fashion-mnist", "synthetic")
PRETRAINED_NAMES = ("none", "imagenet")


def _fail(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{name} must be {expected}, got {value!r}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, else ValueError naming them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def _boolean(name: str, value: object) -> bool:
    """A real bool: "no", 0 or None are not taken for one."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def _integer(name: str, value: object, minimum: int) -> int:
    """An int (not a bool, not a float) >= minimum, returned as a plain int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise _fail(name, f"an int >= {minimum}", value)
    return int(value)


def _real(name: str, value: object, low: float, high: float = math.inf, *,
          low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int or float, not a bool or a string) in the given interval, as a float."""
    if high == math.inf:
        expected = "a finite positive number" if (low, low_open) == (0, True) else (
            f"a finite number {'>' if low_open else '>='} {low:g}")
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(name, expected, value)
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        raise _fail(name, expected, value)
    return float(value)


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(name, "a non-empty string", value)
    return value


def _set(config: object, name: str, value: object) -> None:
    """Store a normalised value (e.g. 10 -> 10.0) on a frozen dataclass."""
    object.__setattr__(config, name, value)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DiabloNet (paper §3, §4.1).

    `pretrained` is checked for form only (a non-empty string): a checkpoint keeps the weights
    path it was trained from, which need not exist where it is loaded. TrainConfig and
    build_model (when it reads the weights) require the file.
    """

    # torchvision backbone, split into F, phi and psi (diablo.backbones.CUTS).
    backbone: str = "googlenet"
    # "none" (random init), "imagenet" (local torchvision weights, never downloaded) or a .pth path.
    pretrained: str = "imagenet"
    # "pre" (Fig. 1b, Eq 3-4), "post" (Fig. 1a, Eq 1-2) or "none" (the global-pooling baseline).
    attention: str = "pre"
    # "feature" (one weight per place, Eq 5-9) or "dimension" (one weight per place and channel, Eq 10-13).
    selection: str = "dimension"
    # N, the dictionary size: the number of attention maps and of embedding branches.
    num_entries: int = 8
    # D, the length of the full embedding; each branch has D / N.
    embedding_dim: int = 512
    # The hardness of the soft assignment (Eq 7, 11); see diablo.attention for the default's choice.
    alpha: float = 10.0
    # Learn alpha with the rest of the network instead of keeping it fixed.
    learn_alpha: bool = False
    # Feed psi / pool N * A ⊙ F instead of A ⊙ F so that uniform attention reproduces the
    # pretrained backbone; a reparametrisation of psi, not a change of Eq 9 / 13.
    rescale: bool = True
    # Keep the backbone's BatchNorm layers on their pretrained running statistics (common DML
    # practice); ignored with pretrained="none", whose initial statistics would collapse the features.
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        _choice("backbone", self.backbone, BACKBONES)
        _choice("attention", self.attention, ATTENTIONS)
        _choice("selection", self.selection, SELECTIONS)
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise _fail("pretrained", "'none', 'imagenet' or a path to a .pth state dict", self.pretrained)
        _set(self, "num_entries", _integer("num_entries", self.num_entries, 1))
        _set(self, "embedding_dim", _integer("embedding_dim", self.embedding_dim, 1))
        if self.attention != "none" and self.embedding_dim % self.num_entries:
            raise ValueError(
                f"num_entries ({self.num_entries}) must divide embedding_dim ({self.embedding_dim})"
            )
        _set(self, "alpha", _real("alpha", self.alpha, 0.0, low_open=True))
        for name in ("learn_alpha", "rescale", "freeze_bn"):
            _boolean(name, getattr(self, name))

    @property
    def branches(self) -> int:
        """Number of embedding branches: N with attention, 1 for the baseline."""
        return 1 if self.attention == "none" else self.num_entries

    @property
    def variant(self) -> str:
        """Short name: 'baseline' or '{pre,post}-{feature,dimension}'."""
        return "baseline" if self.attention == "none" else f"{self.attention}-{self.selection}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from JSON; unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"a ModelConfig is a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(sorted(map(str, unknown)))}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig:
    """One training run of `python -m diablo.train` (paper §3.5, §4.2).

    Every field is a command-line flag (`num_entries` is `--entries`); `--preset` fills in the
    paper's settings for a dataset first. `HELP` describes each field, `CHOICES` the allowed
    values of the string fields that have fixed ones.
    """

    # Dataset name (see diablo.data.DATASETS) and the folder that holds it (None: its default).
    dataset: str = "synthetic"
    root: str | None = None
    # The model (ModelConfig's fields).
    backbone: str = "googlenet"
    pretrained: str = "imagenet"
    attention: str = "pre"
    selection: str = "dimension"
    num_entries: int = 8
    embedding_dim: int = 512
    alpha: float = 10.0
    learn_alpha: bool = False
    rescale: bool = True
    freeze_bn: bool = True
    # Dictionary initialisation (diablo.dictionary): "random" (N(0, 1) entries), "shared" (dimension-wise:
    # random entries, the same for every channel) or "kmeans" (centres of phi features of training images,
    # the same for every channel).
    dictionary_init: str = "random"
    # Loss (contrastive, triplet, binomial) with the paper's parameters.
    loss: str = "binomial"
    # Adam learning rate of the pretrained layers (paper: 1e-5), and the factor for the new ones
    # (dictionary, alpha, embedding layers), which start from scratch.
    lr: float = 1e-5
    new_lr_factor: float = 1.0
    # A further factor for the dictionary alone (lr * new_lr_factor * dictionary_lr_factor): Adam
    # moves every coordinate by about the rate per step, so an entry of norm ~sqrt(m) (N(0, 1) start)
    # turns by at most ~rate radians per step; 1 keeps the dictionary in the new parts' group.
    dictionary_lr_factor: float = 1.0
    weight_decay: float = 0.0
    # Learning-rate schedule over the optimiser steps (SCHEDULES): "constant" (the paper's), or
    # "cosine": a linear warm-up from 0 to each parameter group's peak lr over `warmup_steps`, then a
    # cosine decay to `min_lr_factor` x that peak at the last step.
    schedule: str = "constant"
    # Length of the linear warm-up, in optimiser steps (0: none).
    warmup_steps: int = 0
    # The cosine schedule's floor as a fraction of each group's peak lr, in [0, 1].
    min_lr_factor: float = 0.0
    # Class-balanced batches: P classes x K images (paper: 8 x 10). P >= 2 (a batch of one class has no
    # negatives, so the triplet loss is 0) and K >= 2 (positive pairs).
    classes_per_batch: int = 8
    images_per_class: int = 10
    # Length of training (paper: 40 epochs of 200 steps).
    epochs: int = 40
    steps_per_epoch: int = 200
    # Square crop size of training and test images (paper: 256); at least the backbone's
    # diablo.backbones.MIN_IMAGE_SIZE.
    image_size: int = 256
    # Use at most this many images of each class, in train and evaluation sets (0: all); for quick runs.
    max_per_class: int = 0
    # Share of the training classes held out for model selection (paper §4.2: 0.5); 0 selects on the test split.
    val_fraction: float = 0.0
    # Synthetic data only, instead of val_fraction: validate on this many further groups of classes
    # rendered after the dataset's own (never its test classes), and train on every training class.
    val_groups: int = 0
    seed: int = 0
    # "auto" (cuda, mps, cpu), or any torch device string.
    device: str = "auto"
    # bfloat16 autocast.
    amp: bool = False
    # Train in the channels-last memory format (NHWC): 1.3-1.8x the images/s of NCHW for every variant
    # on a 2-core AVX2 CPU (benchmarks/train_speed.py); the same arithmetic, in another order.
    channels_last: bool = True
    workers: int = 4
    batch_size_eval: int = 64
    # Output folder: last.safetensors, best.safetensors, metrics.jsonl.
    out: str = "runs/diablo"
    # Evaluate every this many epochs (and after the last one).
    eval_every: int = 1
    # Stop after this many optimiser steps in total (0: no limit); for smoke tests and benchmarks.
    max_steps: int = 0
    # Show tqdm progress bars.
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            _choice(name, getattr(self, name), allowed)
        if self.root is not None:
            _text("root", self.root)
        for name in ("device", "out"):
            _text(name, getattr(self, name))
        pretrained = self.pretrained
        if not isinstance(pretrained, str) or not pretrained or (
            pretrained not in PRETRAINED_NAMES and not Path(pretrained).expanduser().is_file()
        ):
            raise _fail("pretrained", "'none', 'imagenet' or the path of an existing .pth file", pretrained)
        for name, minimum in INT_MINIMUMS.items():
            _set(self, name, _integer(name, getattr(self, name), minimum))
        minimum = MIN_IMAGE_SIZE[self.backbone]
        if self.image_size < minimum:
            raise _fail("image_size", f">= {minimum} for {self.backbone} (its smallest input)", self.image_size)
        for name in ("lr", "new_lr_factor", "dictionary_lr_factor"):
            _set(self, name, _real(name, getattr(self, name), 0.0, low_open=True))
        _set(self, "weight_decay", _real("weight_decay", self.weight_decay, 0.0))
        _set(self, "val_fraction", _real("val_fraction", self.val_fraction, 0.0, 1.0, high_open=True))
        _set(self, "min_lr_factor", _real("min_lr_factor", self.min_lr_factor, 0.0, 1.0))
        if self.val_groups and (self.dataset != "synthetic" or self.val_fraction):
            raise _fail("val_groups", "0 unless the dataset is synthetic and val_fraction is 0", self.val_groups)
        for name in ("amp", "channels_last", "progress"):
            _boolean(name, getattr(self, name))
        model = self.model_config()  # validates (and normalises) the model fields
        for field in dataclasses.fields(ModelConfig):
            _set(self, field.name, getattr(model, field.name))

    @property
    def validates(self) -> bool:
        """Whether the run evaluates on validation classes (val_fraction or val_groups), not on test."""
        return bool(self.val_fraction or self.val_groups)

    def model_config(self) -> ModelConfig:
        """The ModelConfig made of this run's model fields (those named as in ModelConfig)."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# The string fields of TrainConfig with fixed choices, and those choices (`pretrained` is free text:
# "none", "imagenet" or a path). A training CLI builds argparse `choices` from these.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "backbone": BACKBONES,
    "attention": ATTENTIONS,
    "selection": SELECTIONS,
    "loss": LOSS_NAMES,
    "dictionary_init": DICTIONARY_INITS,
    "schedule": SCHEDULES,
}

# The int fields of TrainConfig (besides ModelConfig's) and their smallest allowed value.
INT_MINIMUMS: dict[str, int] = {
    "warmup_steps": 0,
    "classes_per_batch": 2,
    "images_per_class": 2,
    "epochs": 1,
    "steps_per_epoch": 1,
    "image_size": 1,
    "max_per_class": 0,
    "val_groups": 0,
    "seed": 0,
    "workers": 0,
    "batch_size_eval": 1,
    "eval_every": 1,
    "max_steps": 0,
}

# One line of help per TrainConfig field (its meaning and unit), for command-line front ends.
HELP: dict[str, str] = {
    "dataset": "dataset name",
    "root": "folder that holds the dataset (default: the dataset's own)",
    "backbone": "torchvision backbone",
    "pretrained": "backbone weights: 'imagenet' (local files, never downloaded), 'none' or a .pth state dict path",
    "attention": "where the attention sits: 'pre' (before psi), 'post' (after psi) or 'none' (the baseline)",
    "selection": "'feature' (one weight per place) or 'dimension' (one weight per place and channel)",
    "num_entries": "dictionary size N: attention maps and embedding branches",
    "embedding_dim": "embedding length D (a multiple of N); each branch has D / N",
    "alpha": "hardness of the soft assignment: the softmax's inverse temperature (> 0)",
    "learn_alpha": "learn alpha (in log space) instead of keeping it fixed",
    "rescale": "multiply the attended maps by N so that uniform attention reproduces the pretrained backbone",
    "freeze_bn": "keep the pretrained backbone's BatchNorm running statistics",
    "dictionary_init": "dictionary start: 'random' N(0, 1), 'shared' across channels, or 'kmeans' of phi features",
    "loss": "metric loss, with the paper's parameters",
    "lr": "Adam learning rate of the pretrained layers (peak lr under a schedule)",
    "new_lr_factor": "learning-rate multiplier of the new layers (dictionary, alpha, embedding)",
    "dictionary_lr_factor": "a further multiplier for the dictionary alone (its own Adam group when not 1)",
    "weight_decay": "Adam weight decay (L2 coefficient, >= 0)",
    "schedule": "learning-rate schedule: 'constant', or 'cosine' (linear warm-up, then cosine decay to a floor)",
    "warmup_steps": "linear learning-rate warm-up length, in optimiser steps (0: none)",
    "min_lr_factor": "cosine schedule floor, as a fraction of each group's peak lr, in [0, 1]",
    "classes_per_batch": "classes per batch, P (>= 2: a batch needs negatives)",
    "images_per_class": "images per class in a batch, K (>= 2: a batch needs positive pairs)",
    "epochs": "number of epochs",
    "steps_per_epoch": "optimiser steps (batches) per epoch",
    "image_size": "side of the square training and test crops, in pixels",
    "max_per_class": "use at most this many images per class (0: all)",
    "val_fraction": "share of the training classes held out for model selection, in [0, 1) (0: select on test)",
    "val_groups": "synthetic only: validate on this many further groups of 6 classes rendered after the "
                  "dataset's, training on all training classes (0: off)",
    "seed": "random seed (>= 0)",
    "device": "'auto' (cuda, then mps, then cpu) or a torch device string such as 'cuda:1'",
    "amp": "bfloat16 autocast",
    "channels_last": "train in the channels-last (NHWC) memory format, faster on CPU and GPU",
    "workers": "data-loading worker processes (0: load in the main process)",
    "batch_size_eval": "images per batch when embedding for evaluation",
    "out": "output folder (checkpoints, metrics.jsonl, optimiser state)",
    "eval_every": "evaluate every this many epochs (and after the last one)",
    "max_steps": "stop after this many optimiser steps in total (0: no limit)",
    "progress": "show progress bars",
}


# The paper's settings per dataset (§3.5, §5; docs/design.md §6).
PAPER = dict(backbone="googlenet", pretrained="imagenet", loss="binomial", lr=1e-5, classes_per_batch=8,
             images_per_class=10, epochs=40, steps_per_epoch=200, image_size=256)
PRESETS: dict[str, dict[str, Any]] = {
    "cub": {**PAPER, "dataset": "cub"},
    "cars": {**PAPER, "dataset": "cars"},
    "sop": {**PAPER, "dataset": "sop"},  # most SOP classes have < 10 images: the sampler repeats them
    "inshop": {**PAPER, "dataset": "inshop"},
    "cub-val": {**PAPER, "dataset": "cub", "val_fraction": 0.5},
    # The bundled demo: small images, the ImageNet MobileNetV2, a CPU-sized budget (checkpoints/make_demo.py
    # adds each variant's dictionary initialisation, chosen on held-out training classes). Rates and schedule
    # were chosen on held-out training classes, the 600-step budget on further synthetic groups
    # (`--val-groups 2`: validation still rising there; the most this CPU fits; checkpoints/README.md).
    "demo": dict(dataset="synthetic", backbone="mobilenet_v2", pretrained="imagenet", loss="binomial", lr=1e-4,
                 new_lr_factor=10.0, classes_per_batch=8, images_per_class=5, epochs=24, steps_per_epoch=25,
                 image_size=128),
}
