"""Every chart and overlay the pages show, built in one place from diablo's numbers.

Overlays take an `OverlayStyle` (controls.py), so a colormap or an opacity means the same on
every page; charts are plotly figures that `show_figure` draws with a PNG download button.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

from app.lab.controls import OverlayStyle

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
MAX_LEGEND_CLASSES = 40  # more classes than this: one trace coloured by label, no legend
WEBGL_POINTS = 5000  # scatter plots with more points use WebGL


# ---- drawing --------------------------------------------------------------------------------


def plotly_config(name: str) -> dict[str, Any]:
    """Plotly's modebar with a 'Download plot as a PNG' button that saves `name`.png at 2x."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}}


def show_figure(fig: go.Figure, name: str, key: str | None = None, **kwargs: Any) -> Any:
    """st.plotly_chart with the PNG download button of the modebar."""
    return st.plotly_chart(fig, config=plotly_config(name), key=key, **kwargs)


def entry_colours(n: int) -> list[str]:
    """'#rrggbb' of entry 0..n-1, the colours of the assignment maps."""
    from diablo.explain import assignment_colours

    return ["#" + "".join(f"{int(c):02x}" for c in rgb) for rgb in assignment_colours(n)]


# ---- overlays (images) ----------------------------------------------------------------------


def attention_overlays(view: Any, style: OverlayStyle, channel: int | None = None,
                       stretch: bool = False) -> list[np.ndarray]:
    """One (S, S, 3) overlay per dictionary entry of a `View` with attention."""
    from diablo.explain import attention_overlays as overlays

    return overlays(view.display, view.attention, channel, style.colormap, style.opacity, stretch)


def assignment(view: Any, channel: int | None = None) -> np.ndarray:
    """The hard assignment map of a `View`: each place coloured by its arg-max entry (opaque)."""
    from diablo.explain import assignment_overlay

    return assignment_overlay(view.display, view.attention, channel, opacity=1.0)


def heat_overlay(display: np.ndarray, heat: np.ndarray, style: OverlayStyle) -> np.ndarray:
    """A [0, 1] heat map (e.g. an attribution) over its image."""
    from diablo.explain import overlay

    return overlay(display, heat, style.colormap, style.opacity)


def image_statistics(view: Any, channel: int | None = None) -> dict[str, Any]:
    """diablo.explain.entry_statistics of one image's attention (share, entropy, ...)."""
    from diablo.explain import entry_statistics

    return entry_statistics(view.attention, channel)


# ---- charts ---------------------------------------------------------------------------------


def entry_share_figure(share: Sequence[float]) -> go.Figure:
    """Bars: each entry's share of the places it wins (%)."""
    names = [f"entry {n}" for n in range(len(share))]
    fig = go.Figure(go.Bar(x=names, y=100 * np.asarray(share, dtype=float), marker_color=entry_colours(len(share))))
    fig.update_layout(title="Share of area (% of the places they win)", height=320, margin=dict(t=40, b=10),
                      yaxis_title="%")
    return fig


def entry_entropy_figure(entry_entropy: Sequence[float]) -> go.Figure:
    """Bars: each entry's mean assignment entropy over the places it wins, with log N (uniform) marked."""
    n = len(entry_entropy)
    fig = go.Figure(go.Bar(x=[f"entry {i}" for i in range(n)], y=list(entry_entropy), marker_color=entry_colours(n)))
    fig.add_hline(y=math.log(n), line_dash="dot", annotation_text="log N (uniform)")
    fig.update_layout(title="Mean assignment entropy of the places they win (nats)", height=320,
                      margin=dict(t=40, b=10), yaxis_title="nats")
    return fig


def branch_share_figure(shares: Sequence[float], similarity: float) -> go.Figure:
    """Bars: one result's similarity split by branch (cosine_n / N, they sum to the similarity)."""
    n = len(shares)
    fig = go.Figure(go.Bar(x=[f"b{i}" for i in range(n)], y=list(shares), marker_color=entry_colours(n),
                           hovertemplate="branch %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(height=150, margin=dict(l=0, r=0, t=22, b=0), showlegend=False,
                      title=dict(text=f"branch shares (sum {similarity:.3f})", font=dict(size=11)))
    return fig


def embedding_scatter(points: np.ndarray, labels: Sequence[int], classes: Sequence[str], hover: Sequence[str],
                      title: str) -> go.Figure:
    """The 2-D map of a gallery: one point per image (customdata = its gallery id), coloured by class."""
    labels = np.asarray(labels)
    trace = go.Scattergl if len(labels) > WEBGL_POINTS else go.Scatter
    fig = go.Figure()
    if len(np.unique(labels)) <= MAX_LEGEND_CLASSES:
        palette = qualitative.Dark24 + qualitative.Light24  # plotly's default 10 colours repeat from the 11th class
        for n, label in enumerate(np.unique(labels)):
            ids = np.flatnonzero(labels == label)
            fig.add_trace(trace(x=points[ids, 0], y=points[ids, 1], mode="markers", name=classes[label],
                                customdata=ids, hovertext=[hover[i] for i in ids],
                                hovertemplate="%{hovertext}<extra></extra>",
                                marker=dict(size=7, opacity=0.85, color=palette[n % len(palette)])))
    else:  # too many classes for a legend: one trace coloured by label
        fig.add_trace(trace(x=points[:, 0], y=points[:, 1], mode="markers", customdata=np.arange(len(labels)),
                            hovertext=list(hover), hovertemplate="%{hovertext}<extra></extra>",
                            marker=dict(size=6, color=labels, colorscale="Turbo", opacity=0.85), showlegend=False))
    fig.update_layout(title=title, height=620, dragmode="lasso", legend=dict(itemsizing="constant"),
                      margin=dict(t=50))
    return fig


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metric_order(metric: str) -> tuple[bool, int]:
    return metric == "map@r", int(metric[7:]) if metric[7:].isdigit() else 0


def training_figures(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[go.Figure, go.Figure]:
    """The loss and the Recall@K / MAP@R curves (%) of metrics histories, by run name.

    A row's x is its "epoch" (else its 1-based position). A row without a "loss" (the epoch-0
    evaluation of the untrained model, an evaluation-only row) adds no loss point; rows without
    a metric (epochs not evaluated, `--eval-every`) add no point to that metric's curve. Both
    charts share the x range, from the first epoch (0 when the history has the untrained row).
    """
    loss_fig, metric_fig = go.Figure(), go.Figure()
    seen: list[float] = []
    for c, (name, rows) in enumerate(histories.items()):
        epochs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
        seen += [e for e in epochs if _number(e)]
        loss = [(e, row["loss"]) for e, row in zip(epochs, rows, strict=True) if _number(row.get("loss"))]
        if loss:
            loss_fig.add_trace(go.Scatter(x=[e for e, _ in loss], y=[v for _, v in loss], mode="lines+markers",
                                          name=name))
        metrics = sorted({k for row in rows for k in row if k.startswith("recall@") or k == "map@r"},
                         key=_metric_order)
        for metric in metrics:
            points = [(e, 100 * row[metric]) for e, row in zip(epochs, rows, strict=True) if _number(row.get(metric))]
            label = metric.replace("recall", "Recall").replace("map@r", "MAP@R")
            metric_fig.add_trace(go.Scatter(x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers",
                                            name=f"{name} · {label}", line=dict(dash=DASHES[c % len(DASHES)])))
    loss_fig.update_layout(title="Training loss per epoch", xaxis_title="epoch", yaxis_title="loss", height=420,
                           showlegend=True, legend=dict(orientation="h", y=-0.25))
    metric_fig.update_layout(title="Recall@K and MAP@R per epoch (%)", xaxis_title="epoch", yaxis_title="%",
                             height=420, legend=dict(orientation="h", y=-0.25))
    first, last = (min(seen), max(seen)) if seen else (1, 1)
    for fig in (loss_fig, metric_fig):  # whole epochs: plotly's own ticks at 1.5, 2.5 printed "2", "3" twice
        fig.update_xaxes(tickformat="d", tick0=first, dtick=max(1, math.ceil((last - first + 1) / 10)),
                         range=[first - 0.3, last + 0.3])
    return loss_fig, metric_fig


def selected_gallery_ids(selection: Any) -> list[int]:
    """Gallery ids of the points of a plotly selection event whose points carry the id as customdata."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError, AttributeError):
        return []
    ids = []
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(data, list | tuple):
            data = data[0] if data else None
        if data is None:
            continue
        try:
            ids.append(int(data))
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(ids))  # unique, in selection order
