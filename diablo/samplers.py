"""Class-balanced P x K batch sampler (paper §3.5: batches of 8 classes x 10 images), DDP-aware.

Each batch draws P distinct classes uniformly, then K images of each class without replacement.
A class with fewer than K images contributes all of its images (shuffled) and fills the rest by
drawing its images again with replacement, so a class with a single image yields K copies of it
(positive pairs of an image with itself); P x K is therefore always the batch size.

Randomness: global batch b of epoch e comes from its own generator seeded with (seed, e, b), so
the stream is reproducible, differs between epochs (`set_epoch`, or automatically after a full
pass) and can be resumed at any position without replaying it. Under DDP (torch.distributed
initialised, or rank / world_size given) rank r yields global batches r, r + W, r + 2W, ... of a
stream of W x len(self) batches: every rank gets different batches from one seeded stream.

Resuming: `state_dict()` holds the epoch and the number of batches this rank already yielded in
it. A DataLoader fetches batches ahead of the training loop, so a trainer that resumes exactly
should store the number of batches it consumed: `load_state_dict({"epoch": e, "position": p})`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


class ClassBalancedSampler(Sampler[list[int]]):
    """Batches of dataset indices, P classes x K images each; a torch batch_sampler.

    labels: one class label per dataset item (e.g. `dataset.labels`).
    batches_per_epoch: per rank; default len(labels) // (P * K * world_size), at least 1.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        classes_per_batch: int = 8,
        images_per_class: int = 10,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be one label per item, got shape {labels.shape}")
        if classes_per_batch < 1 or images_per_class < 1:
            raise ValueError("classes_per_batch and images_per_class must be >= 1")
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < classes_per_batch:
            raise ValueError(f"{len(classes)} classes have images, fewer than classes_per_batch={classes_per_batch}")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        self._members: list[np.ndarray] = np.split(order, bounds)  # class -> its dataset indices
        if world_size is None or rank is None:
            distributed = dist.is_available() and dist.is_initialized()
            world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
            rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.classes_per_batch = int(classes_per_batch)
        self.images_per_class = int(images_per_class)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        batch_size = self.classes_per_batch * self.images_per_class
        if batches_per_epoch is None:
            batches_per_epoch = max(1, len(labels) // (batch_size * self.world_size))
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.batches_per_epoch = int(batches_per_epoch)
        self.epoch = 0
        self.position = 0  # batches of this epoch already yielded by this rank

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch` next; a new epoch starts at its first batch (same epoch: no change)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def batch(self, epoch: int, index: int) -> list[int]:
        """Global batch `index` of `epoch` (the stream that all ranks share): P * K indices."""
        rng = np.random.default_rng([self.seed, epoch, index])
        chosen = rng.choice(len(self._members), size=self.classes_per_batch, replace=False)
        k = self.images_per_class
        out: list[int] = []
        for c in chosen:
            members = self._members[c]
            if len(members) >= k:
                picked = rng.choice(members, size=k, replace=False)
            else:  # all of them, then repeats drawn with replacement
                picked = np.concatenate([rng.permutation(members), rng.choice(members, size=k - len(members))])
            out.extend(int(i) for i in picked)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        while self.position < self.batches_per_epoch:
            index = self.position * self.world_size + self.rank
            self.position += 1
            yield self.batch(epoch, index)
        self.epoch = epoch + 1  # a full pass moves on, as if set_epoch(epoch + 1) were called
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        """Epoch and position (batches already yielded in it) to resume from."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at state["epoch"], batch state["position"]; the seed must match if stored."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        position = int(state.get("position", 0))
        if not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"position {position} is outside an epoch of {self.batches_per_epoch} batches")
        self.epoch = int(state["epoch"])
        self.position = position
