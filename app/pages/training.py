"""Training: the loss and Recall@K / MAP@R curves stored in checkpoints' metrics history."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402

st.header("Training")
st.caption("The metrics history (`meta['history']`) that training stored in each checkpoint.")

ctx = lab.context()
options = {name: str(path) for name, path in lab.list_checkpoints().items()}
current = None
if ctx.checkpoint is not None:
    current = next((name for name, path in options.items() if lab.checkpoint_ref(path).path == ctx.checkpoint.path),
                   None)
    if current is None:  # a path typed in the sidebar
        current = ctx.checkpoint.name
        options[current] = ctx.checkpoint.path
if not options:
    st.error(f"No checkpoints in {lab.checkpoint_dir()}.")
    st.stop()
chosen = st.multiselect("Checkpoints", list(options), default=[current] if current else list(options)[:1],
                        key="training_checkpoints")

histories = {}
for name in chosen:
    try:
        card = lab.read_card(lab.checkpoint_ref(options[name]))
    except Exception as err:  # one unreadable checkpoint does not hide the others
        st.error(f"Cannot read {name}: {lab.describe_error(err)}", icon=":material/error:")
        continue
    if not card.history:
        st.info(f"{name} stores no metrics history.")
        continue
    histories[name] = card

if histories:
    loss_fig = go.Figure()
    metric_fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
    last_epoch = 1
    for c, (name, card) in enumerate(histories.items()):
        short = name.removesuffix(".safetensors")
        rows = card.history
        epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
        last_epoch = max([last_epoch, *(e for e in epochs if isinstance(e, int | float))])
        if any("loss" in row for row in rows):
            loss_fig.add_trace(go.Scatter(x=epochs, y=[row.get("loss") for row in rows], mode="lines+markers",
                                          name=short, connectgaps=True))
        metrics = sorted({k for row in rows for k in row if k.startswith("recall@") or k == "map@r"},
                         key=lambda m: (m == "map@r", int(m.split("@")[1]) if m[7:].isdigit() else 0))
        for metric in metrics:
            label = metric.replace("recall", "Recall").replace("map@r", "MAP@R")
            metric_fig.add_trace(go.Scatter(
                x=epochs, y=[None if row.get(metric) is None else 100 * row[metric] for row in rows],
                mode="lines+markers", name=f"{short} · {label}", line=dict(dash=dashes[c % len(dashes)]),
                connectgaps=True))  # epochs without an evaluation (--eval-every) are skipped
    loss_fig.update_layout(title="Training loss per epoch", xaxis_title="epoch", yaxis_title="loss", height=420,
                           showlegend=True, legend=dict(orientation="h", y=-0.25))
    metric_fig.update_layout(title="Recall@K and MAP@R per epoch (%)", xaxis_title="epoch", yaxis_title="%",
                             height=420, legend=dict(orientation="h", y=-0.25))
    for fig in (loss_fig, metric_fig):  # whole epochs: plotly's own ticks at 1.5, 2.5 printed "2", "3" twice
        fig.update_xaxes(tickformat="d", tick0=1, dtick=max(1, math.ceil(last_epoch / 10)))
    charts = st.columns(2)
    with charts[0]:
        lab.show_figure(loss_fig, "training-loss", key="training_loss_chart")
    with charts[1]:
        lab.show_figure(metric_fig, "training-metrics", key="training_metrics_chart")
    st.caption("The camera icon of each chart's toolbar downloads it as a PNG.")
    for name, card in histories.items():
        with st.expander(f"{name}: history and training config"):
            st.dataframe(card.history, hide_index=True)
            st.json(card.meta.get("train_config") or {}, expanded=False)
