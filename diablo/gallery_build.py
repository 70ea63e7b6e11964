"""Building a gallery index from a checkpoint and a dataset split: `build_index`, resumable, torchrun-ready.

The split's items are cut into shards of `shard_size` consecutive items. Each process of a
torchrun job (rank r of K; one plain process is rank 0 of 1) embeds the shards s with
s % K == r (`diablo.evaluation.embed`) and writes each one as DIR/shards/NNNNN.npy atomically
(float32, or float16 with `float16=True`), so a killed build resumes with the missing shards only.
After a barrier, rank 0 reads the shards, builds the faiss index from them (exact or IVF-Flat by
size, `diablo.approximate`) and writes the index's files and manifest (`diablo.gallery_files`),
the manifest last. Processes join the job from torchrun's environment variables (gloo on CPU,
nccl on GPU, each GPU process on cuda:LOCAL_RANK); across nodes DIR must be a shared folder.

DIR/shards/plan.json records what the shards belong to (`BuildPlan`: the checkpoint's digest, the
dataset, split, image size, items, shard size and dtype). A build into a DIR whose shards or index
belong to another plan is refused (`BuildConflict`) unless `overwrite`, which starts over; the
same build after a finished one finds the index up to date and does nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset
from tqdm.auto import tqdm

from diablo.approximate import APPROXIMATE_FROM, build_faiss_index, index_kind
from diablo.gallery_files import (
    MANIFEST_NAME,
    SHARDS_DIR,
    TOKEN_FILE,
    EmbeddingShards,
    read_manifest,
    save_npy,
    write_gallery,
)

__all__ = ["DEFAULT_SHARD_SIZE", "BuildConflict", "BuildOutcome", "BuildPlan", "Ranks", "build_index"]

DEFAULT_SHARD_SIZE = 4096
PLAN_NAME = "plan.json"
BARRIER_TIMEOUT = timedelta(hours=12)  # ranks wait at the barrier for the slowest one's last shard
DTYPES = {"float32": np.float32, "float16": np.float16}


class BuildConflict(ValueError):
    """The output folder holds the shards or index of another build."""


@dataclass(frozen=True)
class BuildPlan:
    """What a build embeds; shards on disk are reused only under the same plan."""

    checkpoint_digest: str
    dataset: str
    split: str
    root: str | None
    image_size: int
    count: int
    dim: int
    items: str  # sha256 of the items' paths and labels, in order
    shard_size: int
    dtype: str

    def shards(self) -> list[range]:
        """The item ranges of the shards, in order."""
        return [range(s, min(self.count, s + self.shard_size)) for s in range(0, self.count, self.shard_size)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one) and its device."""

    rank: int
    world: int
    device: torch.device
    joined: bool = False  # this process initialised the process group

    @classmethod
    def join(cls, device: str | torch.device = "auto") -> Ranks:
        """Join the torchrun job if the environment names one (nccl on GPU, gloo on CPU)."""
        from diablo.checkpoint import resolve_device

        resolved = resolve_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, resolved)
        joined = not dist.is_initialized()
        if joined:
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
        if resolved.type == "cuda":
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(resolved)
        return cls(dist.get_rank(), dist.get_world_size(), resolved, joined)

    def barrier(self) -> None:
        if self.world > 1:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def leave(self) -> None:
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class BuildOutcome:
    """What a build did on this process."""

    directory: Path
    status: str  # "built" (rank 0 wrote the index), "embedded" (rank > 0), "up to date"
    rank: int
    world: int
    embedded: int  # shards this process embedded
    reused: int  # shards this process found on disk


def items_digest(paths: list[str], labels: list[int]) -> str:
    """sha256 of the items' paths and labels, in order."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels, strict=True):
        digest.update(f"{path}\0{int(label)}\n".encode())
    return digest.hexdigest()


def plan_key(plan: BuildPlan) -> str:
    """The manifest key of a built index: sha256 of its plan."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()


def shard_file(directory: Path, shard: int) -> Path:
    return directory / SHARDS_DIR / f"{shard:05d}.npy"


def _shard_done(path: Path, rows: int, dim: int, dtype: str) -> bool:
    """Whether a complete shard of this shape and dtype is on disk (shards are written atomically)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.shape == (rows, dim) and array.dtype == DTYPES[dtype]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"unreadable": str(path)}


def _state(directory: Path, plan: BuildPlan) -> str:
    """"up to date", "resume" or "new"; BuildConflict naming what DIR holds otherwise."""
    wanted = plan.to_dict()
    try:
        manifest = read_manifest(directory)
    except FileNotFoundError:
        manifest = None
    except ValueError as err:
        raise BuildConflict(f"{directory} holds something else: {err}") from None
    if manifest is not None:
        recorded = (manifest.get("build") or {}).get("plan")
        if recorded == wanted:
            return "up to date"
        raise BuildConflict(f"{directory} holds the index of another build ({_difference(recorded, wanted)}); "
                            "pass --overwrite to replace it, or another --out")
    recorded = _read_json(directory / SHARDS_DIR / PLAN_NAME)
    if recorded is None:
        return "new"
    if recorded == wanted:
        return "resume"
    raise BuildConflict(f"{directory} holds the shards of another build ({_difference(recorded, wanted)}); "
                        "pass --overwrite to start over, or another --out")


def _difference(recorded: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(recorded, dict):
        return "no build record"
    changed = [k for k in wanted if recorded.get(k) != wanted[k]]
    return "different " + ", ".join(changed) if changed else "another format"


def _clear(directory: Path) -> None:
    """Remove a previous build's files from DIR (only this format's files)."""
    shutil.rmtree(directory / SHARDS_DIR, ignore_errors=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for path in directory.glob("*"):
        if TOKEN_FILE.match(path.name):
            path.unlink(missing_ok=True)


def _load_dataset(dataset: str, split: str, root: str | None, image_size: int, options: dict[str, Any],
                  rank: int) -> Any:
    """The split with the test transform; its warnings (files dropped as unreadable) printed once, by rank 0."""
    from diablo.data import build_transform, load_dataset

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(dataset, split=split, root=root,
                            transform=build_transform(train=False, image_size=image_size), **options)
    if rank == 0:
        for w in caught:
            print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    return data


def trained_image_size(meta: Any) -> int | None:
    """The image size a checkpoint was trained at (meta's train_config), None if unrecorded."""
    train = meta.get("train_config") if isinstance(meta, dict) else None
    size = train.get("image_size") if isinstance(train, dict) else None
    return int(size) if size else None


def build_index(
    checkpoint: str | os.PathLike[str],
    dataset: str,
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    float16: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    kind: str = "auto",
    approximate_from: int = APPROXIMATE_FROM,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    options: dict[str, Any] | None = None,
) -> BuildOutcome:
    """Embed one split of `dataset` with `checkpoint` into a gallery index in `out` (see the module docstring).

    image_size defaults to the checkpoint's training size, else the dataset's. kind: "auto"
    (IVF-Flat from `approximate_from` items), "flat" or "ivf-flat". options: `load_dataset` options.
    Raises BuildConflict (out holds another build), FileNotFoundError / ValueError (unreadable
    checkpoint or dataset).
    """
    import diablo
    from diablo.checkpoint import checkpoint_digest
    from diablo.data import default_image_size
    from diablo.evaluation import embed

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    index_kind(1, kind)  # an unknown kind fails before any work
    ranks = Ranks.join(device)
    try:
        directory = Path(out)
        model, config, meta = diablo.load_checkpoint(checkpoint, ranks.device)
        size = image_size or trained_image_size(meta) or default_image_size(dataset, (options or {}).get("resolution"))
        resolved_root = None if root is None else str(Path(root).expanduser().resolve())
        data = _load_dataset(dataset, split, resolved_root, size, dict(options or {}), ranks.rank)
        dtype = "float16" if float16 else "float32"
        plan = BuildPlan(checkpoint_digest(checkpoint), dataset, split, resolved_root, size, len(data),
                         config.embedding_dim, items_digest(data.paths, data.labels), shard_size, dtype)
        state = "new" if overwrite else _state(directory, plan)  # every rank decides before rank 0 writes
        if state == "up to date":
            return BuildOutcome(directory, state, ranks.rank, ranks.world, 0, 0)
        ranks.barrier()
        if ranks.rank == 0:
            if overwrite:
                _clear(directory)
            (directory / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            if state == "new":
                from diablo.files import atomic_write_bytes

                atomic_write_bytes(directory / SHARDS_DIR / PLAN_NAME, json.dumps(plan.to_dict(), indent=1).encode())
        ranks.barrier()
        ranges = plan.shards()
        mine = [s for s in range(len(ranges)) if s % ranks.world == ranks.rank]
        todo = [s for s in mine if not _shard_done(shard_file(directory, s), len(ranges[s]), plan.dim, dtype)]
        total = sum(len(ranges[s]) for s in mine)
        desc = "embed" if ranks.world == 1 else f"embed (rank 0 of {ranks.world})"
        with tqdm(total=total, initial=total - sum(len(ranges[s]) for s in todo), desc=desc, unit="img",
                  disable=not progress or ranks.rank != 0) as bar:
            for s in todo:
                items = ranges[s]
                emb, labels = embed(model, Subset(data, items), batch_size, ranks.device, num_workers, progress=False)
                if labels.tolist() != [data.labels[i] for i in items]:
                    raise ValueError(f"shard {s}: the dataset's labels changed while it was embedded")
                save_npy(shard_file(directory, s), emb.astype(DTYPES[dtype]))  # (len(items), D)
                bar.update(len(items))
        ranks.barrier()
        if ranks.rank != 0:
            return BuildOutcome(directory, "embedded", ranks.rank, ranks.world, len(todo), len(mine) - len(todo))
        _assemble(directory, plan, data, config.branches, kind, approximate_from, progress, {
            "checkpoint": {"path": str(Path(checkpoint).resolve()), "digest": plan.checkpoint_digest},
            "dataset": dataset, "split": split, "root": resolved_root, "image_size": size,
            "batch_size": batch_size, "dtype": dtype, "shard_size": shard_size, "count": plan.count,
            "skipped": [str(p) for p in getattr(data, "skipped", [])], "world_size": ranks.world,
            "command": command, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "plan": plan.to_dict(),
        })
        return BuildOutcome(directory, "built", 0, ranks.world, len(todo), len(mine) - len(todo))
    finally:
        ranks.leave()


def _assemble(directory: Path, plan: BuildPlan, data: Any, num_branches: int, kind: str, approximate_from: int,
              progress: bool, build: dict[str, Any]) -> Path:
    """Rank 0, after every shard is written: the faiss index from the shards, then the files and manifest."""
    from diablo.index import as_embedding_matrix

    ranges = plan.shards()
    files = [shard_file(directory, s) for s in range(len(ranges))]
    missing = [f.name for f, r in zip(files, ranges, strict=True) if not _shard_done(f, len(r), plan.dim, plan.dtype)]
    if missing:
        raise ValueError(f"{directory}: shards {', '.join(missing[:5])} are missing after every rank finished")
    x = as_embedding_matrix(EmbeddingShards(files, [len(r) for r in ranges], plan.dim).array(), "the shards")
    index, params = build_faiss_index(x, kind, approximate_from, progress=progress)  # from the stored values
    shards = [{"file": f"{SHARDS_DIR}/{f.name}", "start": r.start, "count": len(r)}
              for f, r in zip(files, ranges, strict=True)]
    return write_gallery(directory, index, np.asarray(data.labels, dtype=np.int64), kind=params["type"],
                         key=plan_key(plan), num_branches=num_branches,
                         params=params, paths=data.paths, classes=getattr(data, "classes", None), shards=shards,
                         shard_dtype=plan.dtype, build=build)
