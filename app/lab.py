"""The lab's shared state: settings, the sidebar, cached models, galleries, embeddings and
statistics, the image picker, image grids and PNG downloads. Pages call this and the diablo API.

Caching (so that an interaction on cached state stays well under 300 ms):
- models: `st.cache_resource`, keyed by checkpoint path and file stamp (mtime, size), so a
  replaced file is reloaded;
- gallery datasets: `st.cache_resource`, keyed by the gallery spec and the model's image size;
- gallery embeddings (a `diablo.index.GalleryIndex`), metrics and entry statistics: on disk in
  `cache_dir()/galleries/<key>`, key = `diablo.index.index_key(checkpoint, gallery description)`,
  and in memory (process-wide); computing them shows a progress bar;
- 2-D projections: on disk (diablo.projection), UMAP in a background job;
- the inspection of one image (attention maps, embedding): `st.cache_data` by checkpoint and
  image key (gallery id or the upload's SHA-256).

Environment:
    DIABLO_CHECKPOINTS  folder listed by the checkpoint picker (default: the repository's checkpoints/)
    DIABLO_CACHE        cache root (default ~/.cache/diablo); the lab writes under <root>/lab
    DIABLO_SYNTHETIC    JSON parameters of the default synthetic gallery, e.g.
                        '{"num_classes": 6, "images_per_class": 4, "resolution": 64}'
    DIABLO_TORCH_THREADS  torch's CPU threads in the app (default 1, see `torch_threads`)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = "demo-pre-dimension.safetensors"
GALLERY_KINDS = ("Synthetic test split", "Image folder", "Dataset")
PICKED = "lab_picked_gallery_id"  # the gallery image picked last, shared by every page
THUMBNAIL = 112  # pixels, the side of gallery thumbnails


# ---- settings -------------------------------------------------------------------------------


def checkpoint_dir() -> Path:
    """Where the checkpoint picker looks: $DIABLO_CHECKPOINTS, else the repository's checkpoints/."""
    return Path(os.environ.get("DIABLO_CHECKPOINTS") or REPO / "checkpoints").expanduser()


def cache_dir() -> Path:
    """$DIABLO_CACHE/lab, else ~/.cache/diablo/lab."""
    root = os.environ.get("DIABLO_CACHE")
    return (Path(root) if root else Path("~/.cache/diablo")).expanduser() / "lab"


def synthetic_options() -> dict[str, int]:
    """Parameters of the default synthetic gallery: load_synthetic's defaults (the set the demo
    checkpoints were trained and tested on), updated from $DIABLO_SYNTHETIC."""
    import inspect

    from diablo.data.synthetic import load_synthetic

    defaults = inspect.signature(load_synthetic).parameters
    options = {name: int(defaults[name].default) for name in ("num_classes", "images_per_class", "resolution")}
    raw = os.environ.get("DIABLO_SYNTHETIC")
    if raw:
        try:
            options.update({str(k): int(v) for k, v in json.loads(raw).items()})
        except (ValueError, TypeError, AttributeError):
            pass  # a malformed variable keeps the defaults
    return options


def device() -> str:
    """The device models run on: cuda if available (then mps), else cpu."""
    from diablo.checkpoint import resolve_device

    return str(resolve_device("auto"))


def plotly_config(name: str) -> dict[str, Any]:
    """Plotly's modebar with a 'Download plot as a PNG' button that saves `name`.png at 2x."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}}


def show_figure(fig: Any, name: str, key: str | None = None, **kwargs: Any) -> Any:
    """st.plotly_chart with the PNG download button of the modebar."""
    return st.plotly_chart(fig, config=plotly_config(name), key=key, **kwargs)


# ---- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file and its stamp (mtime, size): the cache key of everything derived from it."""

    path: str
    stamp: str

    @property
    def name(self) -> str:
        return Path(self.path).name.removesuffix(".safetensors")


def checkpoint_ref(path: str | os.PathLike[str]) -> CheckpointRef:
    """FileNotFoundError if `path` is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    stat = p.stat()
    return CheckpointRef(str(p.resolve()), f"{stat.st_mtime_ns}-{stat.st_size}")


def list_checkpoints() -> dict[str, Path]:
    """Every .safetensors file under `checkpoint_dir()`, by path relative to it, sorted."""
    folder = checkpoint_dir()
    if not folder.is_dir():
        return {}
    found = sorted(p for p in folder.rglob("*.safetensors") if p.is_file() and not p.name.startswith("."))
    return {p.relative_to(folder).as_posix(): p for p in found}


@st.cache_data(show_spinner=False, max_entries=64)
def _metadata(path: str, stamp: str) -> tuple[Any, dict[str, Any]]:
    from diablo.checkpoint import read_metadata

    return read_metadata(path)


@dataclass(frozen=True)
class Card:
    """What the sidebar's model card shows: the config and meta of a checkpoint (no weights read)."""

    ref: CheckpointRef
    config: Any  # diablo.ModelConfig
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return image_size_of(self.meta)

    @property
    def history(self) -> list[dict[str, Any]]:
        history = self.meta.get("history") or []
        return [row for row in history if isinstance(row, dict)]


def image_size_of(meta: dict[str, Any]) -> int:
    """The square size test images are resized to: the training config's, else 224."""
    train = meta.get("train_config") or {}
    try:
        return int(train.get("image_size") or 224)
    except (TypeError, ValueError):
        return 224


def read_card(ref: CheckpointRef) -> Card:
    """The model card of a checkpoint; FileNotFoundError / ValueError if it is not one."""
    config, meta = _metadata(ref.path, ref.stamp)
    return Card(ref, config, meta if isinstance(meta, dict) else {})


def torch_threads() -> int:
    """CPU threads for torch in the app: $DIABLO_TORCH_THREADS, else 1.

    One thread by default: the app runs one image at a time next to Streamlit's own threads
    (and a background UMAP), and on this project's two shared cores torch's default of one
    OpenMP thread per core made a single 128 px forward pass take 2.4 s instead of 30 ms
    (threads spinning against the other load). Raise it on a dedicated machine for faster
    gallery embedding.
    """
    try:
        return max(1, int(os.environ.get("DIABLO_TORCH_THREADS", "1")))
    except ValueError:
        return 1


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=8)
def _load_model(path: str, stamp: str, device_name: str) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    from diablo.checkpoint import load_checkpoint

    torch.set_num_threads(torch_threads())
    return load_checkpoint(path, device_name)


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded checkpoint: the network (eval mode), its config and meta."""

    ref: CheckpointRef
    net: Any  # diablo.DiabloNet
    config: Any  # diablo.ModelConfig
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def image_size(self) -> int:
        return image_size_of(self.meta)

    @property
    def has_attention(self) -> bool:
        return self.config.attention != "none"

    @property
    def branches(self) -> int:
        return int(self.config.branches)

    @property
    def variant(self) -> str:
        return str(self.config.variant)


def load_model(ref: CheckpointRef) -> Model:
    """The cached model of `ref`; raises what diablo.load_checkpoint raises."""
    net, config, meta = _load_model(ref.path, ref.stamp, device())
    return Model(ref, net, config, meta if isinstance(meta, dict) else {})


def describe_error(err: BaseException) -> str:
    """One line: the exception's message, or its type when it has none."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text or type(err).__name__


def try_load_model(path: str | os.PathLike[str]) -> tuple[Model | None, str | None]:
    """(model, None) or (None, a one-line reason): the app shows the reason instead of crashing."""
    try:
        return load_model(checkpoint_ref(path)), None
    except Exception as err:  # any failure to load is shown as a panel, the app keeps working
        return None, f"{type(err).__name__}: {describe_error(err)}"


# ---- galleries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GallerySpec:
    """Which images the lab searches: a dataset name, split, root, loader options and a size cap."""

    dataset: str
    split: str = "test"
    root: str | None = None
    options: tuple[tuple[str, int], ...] = ()
    limit: int = 0  # at most this many images (evenly spread over the split), 0 = all

    def describe(self) -> str:
        """A stable text that identifies the gallery (part of the cache key)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def title(self) -> str:
        where = f" in {self.root}" if self.root else ""
        capped = f", at most {self.limit} images" if self.limit else ""
        return f"{self.dataset}/{self.split}{where}{capped}"


def default_gallery() -> GallerySpec:
    """The synthetic dataset's test split ($DIABLO_SYNTHETIC sets its parameters)."""
    return GallerySpec("synthetic", "test", None, tuple(sorted(synthetic_options().items())))


@st.cache_resource(show_spinner="Loading the gallery (the synthetic set is generated on first use)…", max_entries=8)
def _load_gallery(spec: GallerySpec, image_size: int) -> Any:
    from diablo.data import build_transform, load_dataset
    from diablo.data.subset import IndexSubset, spread_indices

    dataset = load_dataset(
        spec.dataset, split=spec.split, root=spec.root, transform=build_transform(False, image_size),
        **dict(spec.options),
    )
    if len(dataset) == 0:
        raise ValueError(f"the gallery {spec.title} has no images")
    if spec.limit and len(dataset) > spec.limit:  # the dataset's own items (in-memory pixels, masks) kept
        dataset = IndexSubset(dataset, spread_indices(len(dataset), spec.limit))
    return dataset


@dataclass(frozen=True, eq=False)
class Gallery:
    """A loaded gallery: its spec, the image size it is transformed to, and the dataset."""

    spec: GallerySpec
    image_size: int
    dataset: Any  # diablo.data.base.ImageDataset, or a diablo.data.subset.IndexSubset of one (the size cap)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> list[int]:
        return self.dataset.labels

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    def path(self, index: int) -> str:
        return self.dataset.paths[index]

    def file_name(self, index: int) -> str:
        return Path(self.dataset.paths[index]).name

    def class_name(self, index: int) -> str:
        return self.dataset.classes[self.dataset.labels[index]]

    def image(self, index: int) -> Any:
        """Item `index` as an RGB PIL image (no transform)."""
        return self.dataset.image(index)


def load_gallery(spec: GallerySpec, image_size: int) -> Gallery:
    """The cached gallery; FileNotFoundError / ValueError (e.g. a folder without images)."""
    return Gallery(spec, image_size, _load_gallery(spec, image_size))


@functools.lru_cache(maxsize=256)
def _gallery_key(ref: CheckpointRef, spec: GallerySpec, image_size: int) -> str:
    """diablo.index.index_key of the checkpoint (its content hash) and the gallery; memoised."""
    from diablo.index import index_key

    return index_key(ref.path, f"{spec.describe()}|image_size={image_size}")


def _gallery_folder(key: str) -> Path:
    return cache_dir() / "galleries" / key[:32]


class _Store:
    """Process-wide results of gallery passes (indexes, statistics), most recent last, and a lock
    so that only one gallery pass runs at a time (two would only fight over the cores)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key: Any) -> Any:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """The value stored under `key`, else `compute()` run once (under the lock) and stored."""
        value = self.get(key)
        if value is not None:
            return value
        with self.lock:
            value = self.get(key)
            if value is None:
                value = compute()
                self.put(key, value)
        return value


@st.cache_resource(show_spinner=False)
def _store() -> _Store:
    return _Store()


def _progress(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """A progress bar and a `(done, total)` callback that moves it."""
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{text} {done} / {total}")

    return bar, update


def gallery_index(model: Model, gallery: Gallery) -> Any:
    """The gallery's embeddings under `model` in a diablo.index.GalleryIndex.

    From memory, else from the disk cache, else embedded now (a progress bar) and saved.
    """
    from diablo.index import GalleryIndex

    def compute() -> Any:
        key = _gallery_key(model.ref, gallery.spec, gallery.image_size)
        folder = _gallery_folder(key)
        try:
            index = GalleryIndex.load(folder, key)
        except ValueError:  # a corrupt cache is rebuilt
            index = None
        if index is None:
            index = _embed_gallery(model, gallery, key)
            try:
                index.save(folder)
            except OSError:
                pass  # a read-only cache: keep the index in memory only
        return index

    return _store().memo(("index", model.ref, gallery.spec, gallery.image_size), compute)


def _embed_gallery(model: Model, gallery: Gallery, key: str) -> Any:
    from torch.utils.data import Subset

    from diablo.evaluation import embed
    from diablo.index import GalleryIndex

    n = len(gallery)
    bar, update = _progress(f"Embedding the gallery with {model.name} (once, then cached on disk):")
    chunk = 128
    parts, labels = [], []
    for start in range(0, n, chunk):
        emb, lab = embed(model.net, Subset(gallery.dataset, range(start, min(n, start + chunk))), batch_size=32,
                         progress=False)
        parts.append(emb)
        labels.append(lab)
        update(min(n, start + chunk), n)
    bar.empty()
    return GalleryIndex.build(np.concatenate(parts), np.concatenate(labels), model.branches, key,
                              gallery.dataset.paths)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    from diablo.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, json.dumps(data).encode())
    except OSError:
        pass  # a read-only cache is not an error


@st.cache_data(show_spinner="Scoring the gallery (Recall@K, MAP@R)…", max_entries=64)
def _gallery_metrics(key: str, ks: tuple[int, ...], _index: Any) -> dict:
    from diablo.evaluation import evaluate

    file = _gallery_folder(key) / f"metrics-{'-'.join(map(str, ks))}.json"
    cached = _read_json(file)
    if isinstance(cached, dict) and cached.get("key") == key:
        return cached["metrics"]
    metrics = evaluate(_index.embeddings, _index.labels, ks, with_nmi=True)
    metrics = {name: (None if isinstance(v, float) and math.isnan(v) else float(v)) for name, v in metrics.items()}
    _write_json(file, {"key": key, "metrics": metrics})
    return metrics


def gallery_metrics(model: Model, gallery: Gallery, ks: Sequence[int] | None = None) -> dict[str, float | None]:
    """{"recall@K": .., "map@r": .., "nmi": ..} of the gallery searched leave-one-out (cached); `ks` defaults
    to the gallery dataset's Recall@K list (`diablo.data.k_list`)."""
    from diablo.data import k_list

    if ks is None:
        ks = k_list(gallery.spec.dataset)
    index = gallery_index(model, gallery)
    return _gallery_metrics(index.key, tuple(int(k) for k in ks), index)


STATISTICS_IMAGES = 400  # entry statistics use at most this many gallery images, evenly spread


def entry_statistics(model: Model, gallery: Gallery) -> dict[str, Any]:
    """diablo.explain.dataset_entry_statistics over (at most STATISTICS_IMAGES of) the gallery.

    From memory, else from the disk cache, else computed now (a progress bar) and saved.
    """
    from torch.utils.data import Subset

    from diablo.data.subset import spread_indices
    from diablo.explain import dataset_entry_statistics

    def compute() -> dict[str, Any]:
        key = _gallery_key(model.ref, gallery.spec, gallery.image_size)
        file = _gallery_folder(key) / f"entries-{STATISTICS_IMAGES}.json"
        cached = _read_json(file)
        if isinstance(cached, dict) and cached.get("key") == key:
            return {name: np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
                    if isinstance(v, list) else v for name, v in cached["statistics"].items()}
        ids = spread_indices(len(gallery), STATISTICS_IMAGES)
        bar, update = _progress(f"Summarising {model.name}'s attention over the gallery (once, then cached):")
        stats = dataset_entry_statistics(model.net, Subset(gallery.dataset, ids), batch_size=32, progress=update)
        bar.empty()
        serial = {name: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for name, v in stats.items()}
        serial["entry_entropy"] = [None if math.isnan(v) else v for v in stats["entry_entropy"]]
        _write_json(file, {"key": key, "statistics": serial})
        return stats

    return _store().memo(("entries", model.ref, gallery.spec, gallery.image_size), compute)


# ---- one image ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Picked:
    """The image a page works on: a gallery item or an upload."""

    image: Any  # PIL RGB image
    key: str  # "gallery:<spec>:<id>" or "upload:<sha256>", the cache key of its inspection
    name: str
    gallery_id: int | None = None
    label: int | None = None
    note: str = ""


@dataclass(frozen=True)
class View:
    """An image as one model sees it."""

    display: np.ndarray  # (S, S, 3) uint8: the model's input, resized to its image size
    attention: np.ndarray | None  # (N, c or 1, h, w) float32; None for the baseline
    embedding: np.ndarray  # (D,) float32, unit norm


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(path: str, stamp: str, image_key: str, _image: Any, image_size: int) -> View:
    from diablo.explain import inspect_image

    net, _, _ = _load_model(path, stamp, device())
    seen = inspect_image(net, _image, image_size)
    return View(seen.display, seen.attention, seen.embedding)


def inspect(model: Model, picked: Picked) -> View:
    """The attention maps and embedding of the picked image under `model` (cached)."""
    return _inspect(model.ref.path, model.ref.stamp, picked.key, picked.image, model.image_size)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_upload(data: bytes) -> tuple[Any, str]:
    from PIL import Image

    from diablo.data.image import decode_upload

    try:
        image = decode_upload(data)
    except ValueError:
        raise
    except Exception as err:  # whatever PIL raises on hostile bytes becomes a clear refusal
        raise ValueError(f"the upload could not be decoded ({type(err).__name__}: {describe_error(err)})") from err
    note = f"{image.size[0]} x {image.size[1]} pixels"
    try:
        with Image.open(io.BytesIO(data)) as raw:
            if raw.mode != "RGB":
                note += f", converted from {raw.mode} to RGB"
    except Exception:  # the note is optional
        pass
    return image, note


def read_upload(data: bytes) -> tuple[Any, str]:
    """Decode uploaded bytes to an RGB PIL image and a note (size, conversion).

    ValueError with a one-line reason for anything that is not a usable image: not an image,
    truncated, a decompression bomb, too small (diablo.data.image.decode_upload's rules).
    16-bit, CMYK, RGBA, palette and greyscale images are converted to RGB and accepted.
    """
    return _read_upload(bytes(data))


def _remember(widget_key: str) -> None:
    st.session_state[PICKED] = int(st.session_state[widget_key])


def _choose(page: str, index: int) -> None:
    st.session_state[f"{page}_item"] = index
    st.session_state[PICKED] = index


@st.cache_data(show_spinner=False, max_entries=1024)
def _thumbnail(gallery_key: str, index: int, size: int, _dataset: Any) -> np.ndarray:
    from PIL import Image

    try:
        image = _dataset.image(index).convert("RGB")
    except Exception:  # an unreadable gallery file shows as a grey tile
        return np.full((size, size, 3), 200, dtype=np.uint8)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def thumbnail(gallery: Gallery, index: int, size: int = THUMBNAIL) -> np.ndarray:
    """(h, w, 3) uint8 RGB thumbnail of a gallery item (its dataset's `image`, so in-memory items such as
    Fashion-MNIST's work too), at most `size` pixels a side (cached)."""
    return _thumbnail(gallery.spec.describe(), int(index), int(size), gallery.dataset)


def _browser(page: str, gallery: Gallery, per_page: int = 12, columns: int = 2) -> None:
    """A paged grid of gallery thumbnails, each with a button that picks it.

    `columns` suits the picker's column: 2 in the pages' narrow (1/4 wide) picker column, where
    6 made 20-pixel thumbnails, captions one letter wide and empty buttons.
    """
    names = ["All classes", *gallery.classes]
    chosen = st.selectbox("Class", names, key=f"{page}_browse_class")
    if chosen == "All classes":
        ids = list(range(len(gallery)))
    else:
        label = gallery.classes.index(chosen)
        ids = [i for i, y in enumerate(gallery.labels) if y == label]
    pages = max(1, math.ceil(len(ids) / per_page))
    number = st.number_input(f"Page (1-{pages})", 1, pages, 1, key=f"{page}_browse_page") if pages > 1 else 1
    shown = ids[(int(number) - 1) * per_page : int(number) * per_page]
    for start in range(0, len(shown), columns):
        for column, i in zip(st.columns(columns), shown[start : start + columns], strict=False):
            column.image(thumbnail(gallery, i), caption=f"#{i} {gallery.class_name(i)}", width="stretch")
            column.button(f"Pick #{i}", key=f"{page}_pick_{i}", on_click=_choose, args=(page, i), width="stretch")


def pick_image(page: str, gallery: Gallery | None, label: str = "Image", browse_columns: int = 2) -> Picked | None:
    """The image picker: a gallery item (by number or from the grid) or an upload.

    Returns None (after saying why) when there is nothing usable yet, e.g. a refused upload.
    The gallery item picked last is shared by every page.
    """
    sources = ["Gallery", "Upload"] if gallery is not None else ["Upload"]
    source = st.radio(f"{label} source", sources, horizontal=True, key=f"{page}_source")
    if source == "Upload":
        return _upload(page, label)
    assert gallery is not None
    n = len(gallery)
    item_key = f"{page}_item"
    if item_key not in st.session_state or not 0 <= int(st.session_state[item_key]) < n:
        st.session_state[item_key] = min(max(int(st.session_state.get(PICKED, 0)), 0), n - 1)
    st.number_input(
        f"Gallery image # (0-{n - 1})", min_value=0, max_value=n - 1, step=1, key=item_key,
        on_change=_remember, args=(item_key,),
    )
    with st.expander("Browse the gallery"):
        _browser(page, gallery, columns=browse_columns)
    index = int(st.session_state[item_key])
    st.session_state[PICKED] = index
    try:
        return gallery_item(gallery, index)
    except Exception as err:  # an unreadable gallery file is reported, not fatal
        st.error(f"Cannot read gallery image #{index} ({gallery.path(index)}): {describe_error(err)}")
        return None


def gallery_item(gallery: Gallery, index: int) -> Picked:
    """Gallery item `index` as a Picked image (raises if its file cannot be decoded)."""
    return Picked(
        image=gallery.image(index),
        key=f"gallery:{hashlib.sha256(gallery.spec.describe().encode()).hexdigest()[:16]}:{index}",
        name=gallery.file_name(index),
        gallery_id=index,
        label=int(gallery.labels[index]),
        note=f"#{index}, class {gallery.class_name(index)}",
    )


def search(model: Model, index: Any, picked: Picked, k: int) -> Any:
    """The top k of the picked image in the gallery index: a diablo.index.SearchResult of one query.

    A gallery item uses its stored embedding and is left out of its own results; an upload is
    embedded first.
    """
    if picked.gallery_id is not None:
        query = index.embeddings[picked.gallery_id][None]  # (1, D)
        return index.search(query, k, exclude=np.array([picked.gallery_id]))
    return index.search(inspect(model, picked).embedding[None], k)


def selected_gallery_ids(selection: Any) -> list[int]:
    """Gallery ids of the points of a plotly selection event whose points carry the id as customdata."""
    points = []
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    ids = []
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is None:
            continue
        try:
            ids.append(int(data))
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(ids))  # unique, in selection order


@dataclass(frozen=True, eq=False)
class Background:
    """A diablo.projection.ProjectionJob and when it started (time.monotonic())."""

    job: Any
    started: float

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> np.ndarray:
        return self.job.result()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@st.cache_resource(show_spinner=False, max_entries=32)
def _projection_job(key: str, branch: int | None, num_branches: int, _embeddings: np.ndarray) -> Background:
    from diablo.projection import ProjectionJob

    job = ProjectionJob(_embeddings, "umap", branch=branch, num_branches=num_branches,
                        cache_dir=cache_dir() / "projections", key=key)
    return Background(job, time.monotonic())


def projection(index: Any, method: str, branch: int | None) -> np.ndarray | None:
    """(n, 2) points of the gallery embeddings (or one branch) by "pca" or "umap", cached on disk.

    PCA is computed at once. UMAP comes from the disk cache if there, else from a background
    diablo.projection.ProjectionJob: None while it runs (see `projection_job`), its failure raised.
    """
    from diablo.projection import cache_path, project

    folder = cache_dir() / "projections"
    if method == "pca" or cache_path(folder, index.key, method, branch, index.num_branches, 0).is_file():
        return project(index.embeddings, method, branch, index.num_branches, cache_dir=folder, key=index.key)
    job = projection_job(index, branch)
    return job.result() if job.done() else None


def projection_job(index: Any, branch: int | None) -> Background:
    """The (cached, process-wide) background UMAP job of the gallery embeddings or one branch."""
    return _projection_job(index.key, branch, index.num_branches, index.embeddings)


@st.cache_data(show_spinner=False, max_entries=64)
def _attributions(
    path: str, stamp: str, query_key: str, _query_image: Any, target_key: str, _target: np.ndarray,
    branch: int | None, steps: int, image_size: int,
) -> dict[str, np.ndarray]:
    from diablo.explain import model_input, similarity_attribution

    net, _, _ = _load_model(path, stamp, device())
    x = model_input(net, _query_image, image_size)
    return {
        method: similarity_attribution(net, x, _target, method=method, branch=branch, steps=steps)
        for method in ("integrated_gradients", "gradcam")
    }


def attributions(
    model: Model, picked: Picked, index: Any, target_id: int, branch: int | None, steps: int
) -> dict[str, np.ndarray]:
    """{"integrated_gradients": (S, S), "gradcam": (S, S)} maps in [0, 1] of the query pixels that make
    it similar to gallery item `target_id` (whole embedding or one branch), by diablo.explain (cached)."""
    return _attributions(
        model.ref.path, model.ref.stamp, picked.key, picked.image, f"{index.key}:{target_id}",
        index.embeddings[target_id], branch, int(steps), model.image_size,
    )


def _upload(page: str, label: str) -> Picked | None:
    upload = st.file_uploader(f"Upload an image ({label.lower()})", key=f"{page}_upload")
    if upload is None:
        st.info("Upload an image (PNG, JPEG, WebP, TIFF, BMP, GIF …) to use it here.")
        return None
    data = upload.getvalue()
    try:
        image, note = read_upload(data)
    except ValueError as err:
        st.error(f"Cannot use {upload.name!r}: {err}.")
        return None
    digest = hashlib.sha256(data).hexdigest()[:24]
    return Picked(image=image, key=f"upload:{digest}", name=upload.name, note=note)


# ---- rendering ------------------------------------------------------------------------------


def entry_colours(n: int) -> list[str]:
    """'#rrggbb' of entry 0..n-1, the colours of the assignment maps."""
    from diablo.explain import assignment_colours

    return ["#" + "".join(f"{int(c):02x}" for c in rgb) for rgb in assignment_colours(n)]


def legend(n: int, shares: Sequence[float] | None = None) -> None:
    """A colour chip and name for each entry, with its share of the image when given."""
    chips = []
    for i, colour in enumerate(entry_colours(n)):
        share = "" if shares is None else f" {100 * float(shares[i]):.0f}%"
        chips.append(
            f'<span style="display:inline-block;margin:0 10px 4px 0;white-space:nowrap">'
            f'<span style="display:inline-block;width:12px;height:12px;background:{colour};'
            f'border:1px solid #444;vertical-align:middle"></span> entry {i}{share}</span>'
        )
    st.markdown("".join(chips), unsafe_allow_html=True)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of an (H, W, 3) uint8 RGB image."""
    import cv2

    ok, buffer = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def montage(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    columns: int = 8,
    marks: Sequence[bool | None] | None = None,
    tile: int = 160,
) -> np.ndarray:
    """One (H, W, 3) uint8 image of a grid of tiles with ASCII captions below each, for downloads.

    marks: a green (True) or red (False) frame around a tile, none for None.
    """
    import cv2

    if not images:
        return np.full((8, 8, 3), 255, dtype=np.uint8)
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    caption_h = 18 if captions else 0
    pad = 6
    cell_w, cell_h = tile + pad, tile + caption_h + pad
    canvas = np.full((rows * cell_h + pad, columns * cell_w + pad, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        y, x = pad + r * cell_h, pad + c * cell_w
        img = np.asarray(image, dtype=np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        scale = tile / max(img.shape[:2])
        h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
        canvas[y : y + h, x : x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
        mark = None if marks is None else marks[k]
        if mark is not None:
            colour = (40, 160, 60) if mark else (210, 40, 40)
            cv2.rectangle(canvas, (x - 2, y - 2), (x + w + 1, y + h + 1), colour, 3)
        if captions:
            text = str(captions[k]).encode("ascii", "replace").decode()
            cv2.putText(canvas, text[:28], (x, y + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 20), 1,
                        cv2.LINE_AA)
    return canvas


def download_png(label: str, make: Callable[[], np.ndarray], file_name: str, key: str) -> None:
    """A download button whose PNG is encoded only when clicked."""
    st.download_button(
        label, data=lambda: png_bytes(make()), file_name=file_name, mime="image/png", key=key, on_click="ignore",
        icon=":material/download:",
    )


def result_captions(
    gallery: Gallery, ids: Sequence[int], similarities: Sequence[float], query_label: int | None
) -> tuple[list[str], list[bool | None]]:
    """Caption and right/wrong mark of each result (marks None when the query's label is unknown)."""
    captions, marks = [], []
    for rank, (i, s) in enumerate(zip(ids, similarities, strict=True), start=1):
        right = None if query_label is None else int(gallery.labels[int(i)]) == int(query_label)
        sign = "" if right is None else ("✓ " if right else "✗ ")
        captions.append(f"{sign}{rank}. #{int(i)} · {float(s):.3f} · {gallery.class_name(int(i))}")
        marks.append(right)
    return captions, marks


def metrics_row(metrics: dict[str, float | None]) -> dict[str, str]:
    """Metrics as percent strings with readable names (Recall@1, MAP@R, NMI)."""
    row = {}
    for name, value in metrics.items():
        label = name.replace("recall", "Recall").replace("map@r", "MAP@R").replace("nmi", "NMI")
        row[label] = "n/a" if value is None else f"{100 * float(value):.1f}"
    return row


# ---- the sidebar and the page context -------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the sidebar selected, for the pages."""

    checkpoint: CheckpointRef | None
    checkpoint_error: str | None
    card: Card | None
    gallery: GallerySpec | None
    gallery_error: str | None
    device: str


def _model_card(card: Card) -> None:
    cfg = card.config
    if cfg.attention == "none":
        shape = f"**baseline** · {cfg.backbone} · D = {cfg.embedding_dim}"
    else:
        shape = (f"**{cfg.variant}** · {cfg.backbone} · N = {cfg.num_entries} · D = {cfg.embedding_dim} · "
                 f"α = {cfg.alpha:g}")
    train = card.meta.get("train_config") or {}
    data = train.get("dataset", "unknown data")
    details = [f"{card.image_size} px"]
    if train.get("epochs"):
        details.append(f"{train['epochs']} epochs")
    st.markdown(f"{shape}  \nTrained on **{data}** ({', '.join(details)})")
    tests = card.meta.get("test_metrics") or {}
    recalls = {k: v for k, v in tests.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if recalls:
        row = metrics_row(recalls)
        st.markdown("Recorded test metrics (%):  \n" + " · ".join(f"{name} **{value}**" for name, value in row.items()))
    else:
        st.caption("No test metrics recorded in this checkpoint.")


SIDEBAR_KEYS = (
    "checkpoint", "checkpoint_path", "gallery_kind", "synthetic_classes", "synthetic_images", "gallery_folder",
    "gallery_limit", "gallery_dataset", "gallery_root", "gallery_split",
)  # fmt: skip


def _keep_sidebar_state() -> None:
    """Carry the sidebar's widget values over to the next page.

    The sidebar is drawn by each page script, and Streamlit gives a page's widgets their own ids,
    so without this a page switch would reset them. Re-assigning a widget key before the widget
    is drawn is Streamlit's documented way to keep its value; such widgets therefore get their
    defaults from session state (`setdefault`), never from a `value=` argument.
    """
    for key in SIDEBAR_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def _gallery_picker() -> GallerySpec | None:
    kind = st.radio("Gallery source", GALLERY_KINDS, key="gallery_kind")
    limit_help = "Embedding runs once per checkpoint and gallery, then is cached on disk."
    st.session_state.setdefault("gallery_limit", 2000)
    if kind == GALLERY_KINDS[0]:
        options = synthetic_options()
        st.session_state.setdefault("synthetic_classes", options["num_classes"])
        st.session_state.setdefault("synthetic_images", options["images_per_class"])
        with st.expander("Synthetic set"):
            classes = st.number_input("Classes (half are test classes)", 4, 400, step=2, key="synthetic_classes")
            per_class = st.number_input("Images per class", 2, 200, key="synthetic_images")
        options.update(num_classes=int(classes), images_per_class=int(per_class))
        return GallerySpec("synthetic", "test", None, tuple(sorted(options.items())))
    if kind == GALLERY_KINDS[1]:
        folder = st.text_input("Image folder (one subfolder per class)", key="gallery_folder").strip()
        limit = st.number_input("At most this many images (0 = all)", 0, 1_000_000, key="gallery_limit",
                                help=limit_help)
        if not folder:
            st.info("Enter a folder that holds one subfolder of images per class.")
            return None
        return GallerySpec("folder", "all", folder, (), int(limit))
    from diablo.data import DATASETS

    names = [name for name in DATASETS if name not in ("synthetic", "folder")]
    name = st.selectbox("Dataset", names, key="gallery_dataset")
    root = st.text_input("Dataset root", key="gallery_root").strip() or None
    split = st.selectbox("Split", ("test", "train", "query", "gallery", "all"), key="gallery_split")
    limit = st.number_input("At most this many images (0 = all)", 0, 1_000_000, key="gallery_limit",
                            help=limit_help)
    return GallerySpec(name, split, root, (), int(limit))


def sidebar() -> Context:
    """The sidebar: checkpoint picker and model card, gallery picker, device.

    The page config (title, wide layout) is set once, by app/main.py; a page run on its own (e.g. by
    AppTest.from_file) keeps Streamlit's defaults.
    """
    _keep_sidebar_state()
    with st.sidebar:
        st.subheader("Checkpoint")
        found = list_checkpoints()
        choice = None
        if found:
            names = list(found)
            if st.session_state.get("checkpoint") not in names:
                st.session_state["checkpoint"] = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else names[0]
            choice = st.selectbox("Checkpoint", names, key="checkpoint",
                                  format_func=lambda name: name.removesuffix(".safetensors"))
        else:
            st.caption(f"No checkpoints in {checkpoint_dir()}.")
        typed = st.text_input("…or a checkpoint path", key="checkpoint_path",
                              placeholder="/path/to/model.safetensors").strip()
        path = Path(typed).expanduser() if typed else (found[choice] if choice else None)
        ref = card = error = None
        if path is None:
            error = f"No checkpoint: put .safetensors files in {checkpoint_dir()} or enter a path above."
        else:
            try:
                ref = checkpoint_ref(path)
                card = read_card(ref)
            except Exception as err:  # a broken checkpoint is an error panel, not a crash
                error = f"Cannot load {path.name}: {describe_error(err)}"
        if error:
            st.error(error, icon=":material/error:")
        elif card is not None:
            _model_card(card)

        st.subheader("Gallery")
        gallery_error = None
        spec = _gallery_picker()
        if spec is not None:
            try:
                loaded = load_gallery(spec, card.image_size if card else 224)
                st.caption(f"{len(loaded)} images, {len(loaded.classes)} classes ({spec.dataset}/{spec.split})")
            except Exception as err:  # a missing folder, a folder without images, a bad root
                gallery_error = f"Cannot load the gallery {spec.title}: {describe_error(err)}"
                st.error(gallery_error, icon=":material/error:")
        else:
            gallery_error = "No gallery selected."
        st.caption(f"Device: **{device()}**")
    return Context(ref, error, card, spec, gallery_error, device())


def context() -> Context:
    """Draw the sidebar and return what it selected; every page calls this once, first."""
    return sidebar()


def require_model(ctx: Context) -> Model:
    """The sidebar's model, or an error panel and a stop of this page (other pages keep working)."""
    if ctx.checkpoint is None or ctx.checkpoint_error:
        st.error(ctx.checkpoint_error or "No checkpoint selected.", icon=":material/error:")
        st.stop()
    model, error = try_load_model(ctx.checkpoint.path)
    if model is None:
        st.error(f"The checkpoint {ctx.checkpoint.name} failed to load: {error}", icon=":material/error:")
        st.stop()
    return model


def gallery_for(ctx: Context, model: Model, show_error: bool = True) -> Gallery | None:
    """The sidebar's gallery at `model`'s image size, or None (after an error panel)."""
    if ctx.gallery is None:
        if show_error:
            st.warning(ctx.gallery_error or "No gallery selected.", icon=":material/warning:")
        return None
    try:
        return load_gallery(ctx.gallery, model.image_size)
    except Exception as err:  # shown, not raised
        if show_error:
            st.error(f"Cannot load the gallery {ctx.gallery.title}: {describe_error(err)}", icon=":material/error:")
        return None


def require_gallery(ctx: Context, model: Model) -> Gallery:
    gallery = gallery_for(ctx, model)
    if gallery is None:
        st.stop()
    return gallery


def forget_projection_jobs() -> None:
    """Drop every background UMAP job (e.g. to retry one that failed)."""
    _projection_job.clear()
