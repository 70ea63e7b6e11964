"""Gallery passes in the background: a gallery's embeddings (then its Recall@K) and its entry
statistics under one model, run a chunk at a time by the store's worker (store.py, with
diablo.gallery_service) and read by the pages as far as they got.

Each pass runs on the worker's own copy of the network, so a page's forward passes never wait for
it; results go to the disk cache (`store.gallery_folder`) and come back from it after a restart.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.lab.galleries import Gallery, gallery_key
from app.lab.models import Model
from app.lab.settings import torch_threads
from app.lab.store import Job, Steps, gallery_folder, read_json, store, write_json

STATISTICS_IMAGES = 400  # entry statistics use at most this many gallery images, evenly spread
# Images per step of a pass, and the memory format: measured on the demo checkpoints (128 px, one
# CPU thread, 2 busy cores; docs/design.md §8): 8 images a batch embed ~2x faster than 32 or 64
# (58 vs 26 and 20 images/s, pre-attention), channels-last adds ~5%, a second torch thread makes
# it 5-20x slower (threads spinning against the other load). A step is ~0.15 s.
CHUNK = 8
BUILT_METRICS_MAX = 50_000  # a built index of more items gets no Recall@K in the lab (leave-one-out over all)
CHANNELS_LAST = True


@dataclass(frozen=True, eq=False)
class Ready:
    """A finished embedding pass: the gallery's diablo.index.GalleryIndex and its metrics."""

    index: Any
    metrics: dict[str, float | None]


@dataclass(frozen=True, eq=False)
class Searchable:
    """What can be searched now: the index of the items embedded so far (None before the first
    chunk), how many of the gallery's that is, and the metrics once the whole gallery is done."""

    index: Any | None
    embedded: int
    total: int
    metrics: dict[str, float | None] | None
    job: Job  # live: it moves on after this snapshot was taken
    complete: bool = False  # when the snapshot was taken

    def note(self) -> str:
        """'n of N embedded' while partial, '' when complete."""
        return "" if self.complete else f"{self.embedded} of {self.total} embedded"


def _own_network(model: Model) -> Any:
    """A copy of the model's network for the worker (taken under the model's lock: no hooks on it),
    with the app's torch threads set in the worker's thread too."""
    import torch

    torch.set_num_threads(torch_threads())
    with model.lock:
        return copy.deepcopy(model.net)


def _load_index(key: str) -> Any:
    from diablo.index import GalleryIndex

    try:
        return GalleryIndex.load(gallery_folder(key), key)
    except ValueError:  # a corrupt cache is rebuilt
        return None


def _metrics_file(key: str, ks: tuple[int, ...]) -> Any:
    return gallery_folder(key) / f"metrics-{'-'.join(map(str, ks))}.json"


def _cached_metrics(key: str, ks: tuple[int, ...]) -> dict[str, float | None] | None:
    cached = read_json(_metrics_file(key, ks))
    return cached["metrics"] if isinstance(cached, dict) and cached.get("key") == key else None


def _embedding_steps(model: Model, gallery: Gallery, key: str, ks: tuple[int, ...]) -> Steps:
    from diablo.evaluation import evaluate
    from diablo.gallery_service import embedding_pass
    from diablo.index import GalleryIndex

    n = len(gallery)
    index = _load_index(key)
    if index is None:
        emb = labels = None
        for emb, labels in embedding_pass(_own_network(model), gallery.dataset, CHUNK, CHANNELS_LAST):
            yield len(emb), n, (emb, labels)
        index = GalleryIndex.build(emb.copy(), labels.copy(), model.branches, key, gallery.dataset.paths)
        try:
            index.save(gallery_folder(key))
        except OSError:
            pass  # a read-only cache: keep the index in memory only
        yield n, n, (index.embeddings, index.labels)
    metrics = _cached_metrics(key, ks)
    if metrics is None:
        raw = evaluate(index.embeddings, index.labels, ks, with_nmi=True)
        metrics = {name: (None if isinstance(v, float) and math.isnan(v) else float(v)) for name, v in raw.items()}
        write_json(_metrics_file(key, ks), {"key": key, "metrics": metrics})
    return Ready(index, metrics)


def _built_steps(gallery: Gallery, key: str, ks: tuple[int, ...]) -> Steps:
    """A built index is embedded already: only its metrics (when small enough) are computed."""
    from diablo.evaluation import evaluate

    index = gallery.built
    n = len(index)
    yield 0, n, None
    metrics = _cached_metrics(key, ks)
    if metrics is None and n <= BUILT_METRICS_MAX:
        raw = evaluate(index.embeddings, index.labels, ks, with_nmi=True)
        metrics = {name: (None if isinstance(v, float) and math.isnan(v) else float(v)) for name, v in raw.items()}
        write_json(_metrics_file(key, ks), {"key": key, "metrics": metrics})
    return Ready(index, metrics or {})


def _built_ks(gallery: Gallery) -> tuple[int, ...]:
    from diablo.data import k_list

    try:
        return tuple(int(k) for k in k_list(str(gallery.built.build.get("dataset", "folder"))))
    except Exception:  # an unknown dataset name: the folder's K list
        return tuple(int(k) for k in k_list("folder"))


def gallery_job(model: Model, gallery: Gallery) -> Job:
    """The background pass that embeds the gallery with `model` and scores it (Recall@K at the
    dataset's K list, MAP@R, NMI); finished at once when both are in the disk cache. A built index
    (gallery.built) is not embedded again: its pass only scores it."""
    from diablo.data import k_list

    key = gallery_key(model.ref, gallery.spec, gallery.image_size)
    if gallery.built is not None:
        ks = _built_ks(gallery)
        return store().job(("built", key), f"Scoring the built index with {model.name}",
                           lambda: _built_steps(gallery, key, ks))
    ks = tuple(int(k) for k in k_list(gallery.spec.dataset))

    def cached() -> Ready | None:
        metrics = _cached_metrics(key, ks)
        index = _load_index(key) if metrics is not None else None
        return None if index is None else Ready(index, metrics)

    return store().job(("index", key), f"Embedding the gallery with {model.name}",
                       lambda: _embedding_steps(model, gallery, key, ks), cached)


def _partial_index(job: Job, model: Model, gallery: Gallery, key: str) -> tuple[Any, int]:
    """A GalleryIndex of the rows embedded so far (rebuilt when more are), and their number."""
    from diablo.index import GalleryIndex

    part = job.partial
    if part is None:
        return None, 0
    emb, labels = part
    n = len(emb)
    built = job.views.get("partial")
    if built is None or built[0] != n:
        index = GalleryIndex.build(np.array(emb[:n]), np.array(labels[:n]), model.branches, key,
                                   gallery.dataset.paths[:n])
        built = (n, index)
        job.views["partial"] = built
    return built[1], n


def searchable(model: Model, gallery: Gallery) -> Searchable:
    """The gallery as far as it is embedded with `model` (asks for the pass if not started)."""
    job = gallery_job(model, gallery)
    if gallery.built is not None:  # searchable at once; Recall@K once its pass is done
        metrics = (job.result.metrics or None) if job.ok else None
        return Searchable(gallery.built, len(gallery), len(gallery), metrics, job, True)
    if job.ok:
        return Searchable(job.result.index, len(gallery), len(gallery), job.result.metrics, job, True)
    index, n = _partial_index(job, model, gallery, gallery_key(model.ref, gallery.spec, gallery.image_size))
    return Searchable(index, n, len(gallery), None, job)


def _statistics_file(key: str) -> Any:
    return gallery_folder(key) / f"entries-{STATISTICS_IMAGES}.json"


def _statistics_steps(model: Model, gallery: Gallery, key: str) -> Steps:
    from torch.utils.data import Subset

    from diablo.data.subset import spread_indices
    from diablo.gallery_service import entry_statistics_pass

    ids = spread_indices(len(gallery), STATISTICS_IMAGES)
    stats: dict[str, Any] = {}
    for stats in entry_statistics_pass(_own_network(model), Subset(gallery.dataset, ids), chunk=CHUNK):
        yield stats["images"], len(ids), None
    serial = {name: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for name, v in stats.items()}
    serial["entry_entropy"] = [None if math.isnan(v) else v for v in stats["entry_entropy"]]
    write_json(_statistics_file(key), {"key": key, "statistics": serial})
    return stats


def statistics_job(model: Model, gallery: Gallery) -> Job:
    """The background pass of diablo.explain.dataset_entry_statistics over (at most
    STATISTICS_IMAGES of) the gallery; finished at once when it is in the disk cache."""
    key = gallery_key(model.ref, gallery.spec, gallery.image_size)

    def cached() -> dict[str, Any] | None:
        found = read_json(_statistics_file(key))
        if not (isinstance(found, dict) and found.get("key") == key):
            return None
        return {name: np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
                if isinstance(v, list) else v for name, v in found["statistics"].items()}

    return store().job(("entries", key), f"Summarising {model.name}'s attention over the gallery",
                       lambda: _statistics_steps(model, gallery, key), cached)
