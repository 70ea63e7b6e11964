"""The shared sidebar (checkpoint, gallery, device), drawn once per run by app/main.py before the
page, and what pages read from it.

Widgets created in the entrypoint keep their state across pages (Streamlit's "widgets in the
entrypoint" pattern), so the sidebar is drawn by app/main.py only; it leaves what it selected in
session state (`CONTEXT`) and pages get it with `context()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from app.lab import waiting
from app.lab.errors import describe_error
from app.lab.galleries import INDEX, Gallery, GallerySpec, load_gallery
from app.lab.models import Card, CheckpointRef, Model, checkpoint_ref, list_checkpoints, read_card, try_load_model
from app.lab.output import metrics_row
from app.lab.passes import Searchable, searchable
from app.lab.settings import DEFAULT_CHECKPOINT, checkpoint_dir, device, synthetic_options

CONTEXT = "lab_context"  # session state: the Context of this run's sidebar
GALLERY_KINDS = ("Synthetic test split", "Image folder", "Dataset", "Built index (directory)")
DEFAULT_LIMIT = 2000  # gallery images at most, by default (folders and datasets)


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
    recalls = {k: v for k, v in tests.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if recalls:
        row = metrics_row(recalls)
        st.markdown("Recorded test metrics (%):  \n" + " · ".join(f"{name} **{value}**" for name, value in row.items()))
    else:
        st.caption("No test metrics recorded in this checkpoint.")


def _gallery_picker() -> GallerySpec | None:
    kind = st.radio("Gallery source", GALLERY_KINDS, key="gallery_kind")
    limit_help = "Embedding runs once per checkpoint and gallery, then is cached on disk."
    if kind == GALLERY_KINDS[0]:
        options = synthetic_options()
        with st.expander("Synthetic set"):
            classes = st.number_input("Classes (half are test classes)", 4, 400, options["num_classes"], step=2,
                                      key="synthetic_classes")
            per_class = st.number_input("Images per class", 2, 200, options["images_per_class"],
                                        key="synthetic_images")
        options.update(num_classes=int(classes), images_per_class=int(per_class))
        return GallerySpec("synthetic", "test", None, tuple(sorted(options.items())))
    if kind == GALLERY_KINDS[1]:
        folder = st.text_input("Image folder (one subfolder per class)", key="gallery_folder").strip()
        limit = st.number_input("At most this many images (0 = all)", 0, 1_000_000, DEFAULT_LIMIT,
                                key="gallery_limit", help=limit_help)
        if not folder:
            st.info("Enter a folder that holds one subfolder of images per class.")
            return None
        return GallerySpec("folder", "all", folder, (), int(limit))
    if kind == GALLERY_KINDS[3]:
        folder = st.text_input("Index directory (made by `python -m diablo.index build`)",
                               key="gallery_index").strip()
        if not folder:
            st.info("Enter a directory written by `python -m diablo.index build`: its embeddings and index are "
                    "used as they are (nothing is embedded), its images read from their recorded paths.")
            return None
        return GallerySpec(INDEX, "all", folder)
    from diablo.data import DATASETS

    names = [name for name in DATASETS if name not in ("synthetic", "folder")]
    name = st.selectbox("Dataset", names, key="gallery_dataset")
    root = st.text_input("Dataset root", key="gallery_root").strip() or None
    split = st.selectbox("Split", ("test", "train", "query", "gallery", "all"), key="gallery_split")
    limit = st.number_input("At most this many images (0 = all)", 0, 1_000_000, DEFAULT_LIMIT, key="gallery_limit",
                            help=limit_help)
    return GallerySpec(name, split, root, (), int(limit))


def _checkpoint_picker() -> tuple[CheckpointRef | None, Card | None, str | None]:
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
    if path is None:
        return None, None, f"No checkpoint: put .safetensors files in {checkpoint_dir()} or enter a path above."
    try:
        ref = checkpoint_ref(path)
        return ref, read_card(ref), None
    except Exception as err:  # a broken checkpoint is an error panel, not a crash
        return None, None, f"Cannot load {path.name}: {describe_error(err)}"


def draw() -> Context:
    """Draw the sidebar (checkpoint picker and model card, gallery picker, device) and leave what it
    selected in session state for the page; app/main.py calls this once per run, before the page."""
    with st.sidebar:
        ref, card, error = _checkpoint_picker()
        if error:
            st.error(error, icon=":material/error:")
        elif card is not None:
            _model_card(card)

        st.subheader("Gallery")
        gallery_error = None
        spec = _gallery_picker()
        if spec is not None:
            try:
                st.caption(load_gallery(spec, card.image_size if card else 224).summary())
            except Exception as err:  # a missing folder, a folder without images, a bad root
                gallery_error = f"Cannot load the gallery {spec.title}: {describe_error(err)}"
                st.error(gallery_error, icon=":material/error:")
        else:
            gallery_error = "No gallery selected."
        st.caption(f"Device: **{device()}**")
    ctx = Context(ref, error, card, spec, gallery_error, device())
    st.session_state[CONTEXT] = ctx
    return ctx


def context() -> Context:
    """What the sidebar selected in this run; a page opened without app/main.py says so and stops."""
    ctx = st.session_state.get(CONTEXT)
    if not isinstance(ctx, Context):
        st.error("The lab's pages run inside the app: start it with `streamlit run app/main.py`.")
        st.stop()
    return ctx


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
    """The sidebar's gallery at `model`'s image size, or None (after a message when `show_error`)."""
    if ctx.gallery is None:
        if show_error:
            st.warning(ctx.gallery_error or "No gallery selected.", icon=":material/warning:")
        return None
    try:
        gallery = load_gallery(ctx.gallery, model.image_size)
    except Exception as err:  # shown, not raised
        if show_error:
            st.error(f"Cannot load the gallery {ctx.gallery.title}: {describe_error(err)}", icon=":material/error:")
        return None
    if gallery.built is not None:
        try:
            gallery.built.check_checkpoint(_digest(model.ref.path, model.ref.stamp))
        except Exception as err:  # another model than the index's: refused in one line
            if show_error:
                st.error(refusal(model, ctx.gallery, err), icon=":material/error:")
            return None
    return gallery


def refusal(model: Model, spec: GallerySpec, err: BaseException) -> str:
    """The one line that refuses a checkpoint for a built index embedded with another model."""
    return f"Cannot use {model.name} with {spec.title}: {describe_error(err)}"


def refused(ctx: Context, model: Model) -> str | None:
    """Why `model` cannot search the sidebar's built index (another model embedded it), else None."""
    if ctx.gallery is None or ctx.gallery.dataset != INDEX:
        return None
    try:
        gallery = load_gallery(ctx.gallery, model.image_size)
        gallery.built.check_checkpoint(_digest(model.ref.path, model.ref.stamp))
    except Exception as err:
        return refusal(model, ctx.gallery, err)
    return None


@st.cache_data(show_spinner=False, max_entries=64)
def _digest(path: str, stamp: str) -> str:
    """diablo.checkpoint.checkpoint_digest of a checkpoint file (by path and file stamp)."""
    from diablo.checkpoint import checkpoint_digest

    return checkpoint_digest(path)


def require_gallery(ctx: Context, model: Model) -> Gallery:
    """The sidebar's gallery, or a message and a stop of this page."""
    gallery = gallery_for(ctx, model)
    if gallery is None:
        st.stop()
    return gallery


def require_searchable(model: Model, gallery: Gallery, key: str = "embedding_retry") -> Searchable:
    """The gallery as far as `model` has embedded it (passes.searchable); a failed pass is an error
    with a retry (button key `key`) and a stop of this page."""
    found = searchable(model, gallery)
    if waiting.failed(found.job, f"Cannot embed the gallery {gallery.spec.title} with {model.name}", key=key):
        st.stop()
    return found


def require_index(model: Model, gallery: Gallery) -> Any:
    """The whole gallery's index under `model`, or the pass's progress (refreshing) and a stop of this page."""
    found = require_searchable(model, gallery)
    if not found.complete:
        waiting.follow(found.job, f"Embedding the gallery with {model.name}")
        st.stop()
    return found.index
