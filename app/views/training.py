"""Training: the loss and Recall@K / MAP@R curves stored in checkpoints' metrics history."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.lab import figures, models, sidebar
from app.lab.errors import describe_error
from app.lab.settings import checkpoint_dir

st.header("Training")
st.caption("The metrics history (`meta['history']`) that training stored in each checkpoint; epoch 0, when "
           "there, is the untrained model's evaluation (no loss yet).")

ctx = sidebar.context()
options = {name: str(path) for name, path in models.list_checkpoints().items()}
current = None
if ctx.checkpoint is not None:
    current = next((name for name, path in options.items() if str(Path(path).resolve()) == ctx.checkpoint.path),
                   None)
    if current is None:  # a path typed in the sidebar
        current = ctx.checkpoint.name
        options[current] = ctx.checkpoint.path
if not options:
    st.error(f"No checkpoints in {checkpoint_dir()}.")
    st.stop()
chosen = st.multiselect("Checkpoints", list(options), default=[current] if current else list(options)[:1],
                        key="training_checkpoints")

cards = {}
for name in chosen:
    try:
        card = models.read_card(models.checkpoint_ref(options[name]))
    except Exception as err:  # one unreadable checkpoint does not hide the others
        st.error(f"Cannot read {name}: {describe_error(err)}", icon=":material/error:")
        continue
    if not card.history:
        st.info(f"{name} stores no metrics history.")
        continue
    cards[name] = card

if cards:
    loss_fig, metric_fig = figures.training_figures(
        {name.removesuffix(".safetensors"): card.history for name, card in cards.items()})
    charts = st.columns(2)
    with charts[0]:
        figures.show_figure(loss_fig, "training-loss", key="training_loss_chart")
    with charts[1]:
        figures.show_figure(metric_fig, "training-metrics", key="training_metrics_chart")
    st.caption("The camera icon of each chart's toolbar downloads it as a PNG.")
    for name, card in cards.items():
        with st.expander(f"{name}: history and training config"):
            st.dataframe(card.history, hide_index=True)
            st.json(card.meta.get("train_config") or {}, expanded=False)
