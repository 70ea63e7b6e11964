"""Configuration dataclasses, serialised as JSON into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKBONES = ("googlenet", "mobilenet_v2")
ATTENTIONS = ("pre", "post", "none")
SELECTIONS = ("feature", "dimension")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DiabloNet (paper §3, §4.1; DESIGN.md §2-3)."""

    # torchvision backbone split at the cut points of DESIGN.md §3.
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
    # pretrained backbone (DESIGN.md §7); a reparametrisation of psi, not a change of Eq 9 / 13.
    rescale: bool = True
    # Keep the backbone's BatchNorm layers on their pretrained running statistics (common DML
    # practice); ignored with pretrained="none", whose initial statistics would collapse the features.
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        for field, allowed in (("backbone", BACKBONES), ("attention", ATTENTIONS), ("selection", SELECTIONS)):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; allowed: {', '.join(allowed)}")
        if not isinstance(self.num_entries, int) or isinstance(self.num_entries, bool) or self.num_entries < 1:
            raise ValueError(f"num_entries must be a positive int, got {self.num_entries!r}")
        if not isinstance(self.embedding_dim, int) or isinstance(self.embedding_dim, bool) or self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive int, got {self.embedding_dim!r}")
        if self.attention != "none" and self.embedding_dim % self.num_entries:
            raise ValueError(
                f"num_entries ({self.num_entries}) must divide embedding_dim ({self.embedding_dim})"
            )
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ValueError("pretrained must be 'none', 'imagenet' or a path to a .pth state dict")

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


LOSS_NAMES = ("contrastive", "triplet", "binomial")
DICTIONARY_INITS = ("random", "shared", "kmeans")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of `python -m diablo.train` (paper §3.5, §4.2; DESIGN.md §5).

    Every field is a command-line flag (`num_entries` is `--entries`); `--preset` fills in the
    paper's settings for a dataset first.
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
    weight_decay: float = 0.0
    # Class-balanced batches: P classes x K images (paper: 8 x 10).
    classes_per_batch: int = 8
    images_per_class: int = 10
    # Length of training (paper: 40 epochs of 200 steps).
    epochs: int = 40
    steps_per_epoch: int = 200
    # Square crop size of training and test images (paper: 256).
    image_size: int = 256
    # Use at most this many images of each class, in train and evaluation sets (0: all); for quick runs.
    max_per_class: int = 0
    # Share of the training classes held out for model selection (paper §4.2: 0.5); 0 selects on the test split.
    val_fraction: float = 0.0
    seed: int = 0
    # "auto" (cuda, mps, cpu), or any torch device string.
    device: str = "auto"
    # bfloat16 autocast.
    amp: bool = False
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
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; allowed: {', '.join(LOSS_NAMES)}")
        positive = ("lr", "classes_per_batch", "images_per_class", "epochs", "steps_per_epoch", "image_size",
                    "eval_every", "batch_size_eval", "new_lr_factor")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.images_per_class < 2:
            raise ValueError("images_per_class must be >= 2 (a batch needs positive pairs)")
        if self.dictionary_init not in DICTIONARY_INITS:
            allowed = ", ".join(DICTIONARY_INITS)
            raise ValueError(f"unknown dictionary_init {self.dictionary_init!r}; allowed: {allowed}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if min(self.workers, self.max_steps, self.max_per_class, self.weight_decay) < 0:
            raise ValueError("workers, max_steps, max_per_class and weight_decay must be >= 0")
        self.model_config()  # validates the model fields

    def model_config(self) -> ModelConfig:
        """The ModelConfig made of this run's model fields (those named as in ModelConfig)."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# The paper's settings per dataset (§3.5, §5; DESIGN.md §5).
PAPER = dict(backbone="googlenet", pretrained="imagenet", loss="binomial", lr=1e-5, classes_per_batch=8,
             images_per_class=10, epochs=40, steps_per_epoch=200, image_size=256)
PRESETS: dict[str, dict[str, Any]] = {
    "cub": {**PAPER, "dataset": "cub"},
    "cars": {**PAPER, "dataset": "cars"},
    "sop": {**PAPER, "dataset": "sop"},  # most SOP classes have < 10 images: the sampler repeats them
    "inshop": {**PAPER, "dataset": "inshop"},
    "cub-val": {**PAPER, "dataset": "cub", "val_fraction": 0.5},
    # The bundled demo: small images, the ImageNet MobileNetV2, a CPU-sized budget (checkpoints/make_demo.py
    # adds each variant's dictionary initialisation, chosen on held-out training classes).
    "demo": dict(dataset="synthetic", backbone="mobilenet_v2", pretrained="imagenet", loss="binomial", lr=1e-4,
                 new_lr_factor=10.0, classes_per_batch=8, images_per_class=5, epochs=8, steps_per_epoch=25,
                 image_size=128),
}
