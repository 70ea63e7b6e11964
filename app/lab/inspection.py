"""One image under one model: its attention maps and embedding, its nearest gallery items, and what
makes it similar to one of them (all computed by diablo, cached here)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from app.lab.galleries import Gallery
from app.lab.models import Model, loaded
from app.lab.settings import device


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


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(path: str, stamp: str, image_key: str, _image: Any, image_size: int) -> View:
    from diablo.explain import inspect_image

    got = loaded(path, stamp, device())
    with got.lock:
        seen = inspect_image(got.net, _image, image_size)
    return View(seen.display, seen.attention, seen.embedding)


def inspect(model: Model, picked: Picked) -> View:
    """The attention maps and embedding of the picked image under `model` (cached)."""
    return _inspect(model.ref.path, model.ref.stamp, picked.key, picked.image, model.image_size)


def search(model: Model, index: Any, picked: Picked, k: int) -> Any:
    """The top k of the picked image in the gallery index: a diablo.index.SearchResult of one query.

    The index may hold the first items of the gallery only (a pass still running). A gallery item
    in it uses its stored embedding and is left out of its own results; any other query (an upload,
    an item not embedded yet) is embedded first (`inspect`, cached).
    """
    if picked.gallery_id is not None and picked.gallery_id < len(index):
        query = index.rows(np.array([picked.gallery_id]))  # (1, D), without reading the rest
        return index.search(query, k, exclude=np.array([picked.gallery_id]))
    return index.search(inspect(model, picked).embedding[None], k)


@st.cache_data(show_spinner=False, max_entries=64)
def _attributions(
    path: str, stamp: str, query_key: str, _query_image: Any, target_key: str, _target: np.ndarray,
    branch: int | None, steps: int, image_size: int,
) -> dict[str, np.ndarray]:
    from diablo.explain import model_input, similarity_attribution

    got = loaded(path, stamp, device())
    with got.lock:  # captum hooks the network and switches its gradients off: no other pass meanwhile
        x = model_input(got.net, _query_image, image_size)
        return {
            method: similarity_attribution(got.net, x, _target, method=method, branch=branch, steps=steps)
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


LINKS = 16  # strongest region-to-region links kept per entry (and over all entries)


@dataclass(frozen=True, eq=False)
class Match:
    """Why a query and a result match: diablo.explain.similarity_decomposition as numpy, per entry."""

    query_display: np.ndarray  # (S, S, 3) uint8
    result_display: np.ndarray  # (S, S, 3) uint8
    query_map: np.ndarray  # (N, h, w): each query place's part of the cosine (summed over the result's places)
    result_map: np.ndarray  # (N, h', w')
    entry_share: np.ndarray  # (N,): each entry's part of the cosine (cos_n / N); sums to `cosine`
    cosine: float  # <model(query), model(result)>
    links: dict[int | None, list[tuple[tuple[int, int], tuple[int, int], float]]]  # entry (None: all) -> strongest
    attention: str  # the model's config.attention: "pre", "post" or "none" (where the places are)


@st.cache_data(show_spinner=False, max_entries=64)
def _match(path: str, stamp: str, query_key: str, _query: Any, result_key: str, _result: Any,
           image_size: int) -> Match:
    from diablo.explain import model_input, similarity_decomposition

    got = loaded(path, stamp, device())
    with got.lock:  # the decomposition hooks psi: no other pass through the network meanwhile
        q, r = model_input(got.net, _query, image_size), model_input(got.net, _result, image_size)
        parts = similarity_decomposition(got.net, q, r)
    entries = int(parts.entry_share.shape[0])
    links = {n: parts.strongest_links(n, LINKS) for n in [None, *range(entries)]}
    return Match(
        query_display=_inspect(path, stamp, query_key, _query, image_size).display,
        result_display=_inspect(path, stamp, result_key, _result, image_size).display,
        query_map=parts.query_map.double().cpu().numpy(),
        result_map=parts.result_map.double().cpu().numpy(),
        entry_share=parts.entry_share.double().cpu().numpy(),
        cosine=float(parts.cosine),
        links=links,
        attention=str(got.config.attention),
    )


def match(model: Model, query: Picked, result: Picked) -> Match:
    """The cosine of the query and a result split over dictionary entries and pairs of places (cached)."""
    return _match(model.ref.path, model.ref.stamp, query.key, query.image, result.key, result.image,
                  model.image_size)
