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
LINK_TILE = 256  # pixels a side of each image of the region-to-region links figure
LINK_GAP = 24  # pixels between the two images


# ---- drawing --------------------------------------------------------------------------------


def plotly_config(name: str) -> dict[str, Any]:
    """Plotly's modebar with a 'Download plot as a PNG' button that saves `name`.png at 2x."""
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}}


def show_figure(fig: go.Figure, name: str, key: str | None = None, **kwargs: Any) -> Any:
    """st.plotly_chart with the PNG download button of the modebar."""
    return st.plotly_chart(fig, config=plotly_config(name), key=key, **kwargs)


def _entry_rgb(entry: int, n: int) -> np.ndarray:
    from diablo.explain import assignment_colours

    return assignment_colours(n)[entry]


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


def match_heat(match: Any, entry: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The query's and the result's similarity maps of one entry (None: all entries summed), on one
    scale in [0, 1]: 1 = the largest positive part of either map, negative parts at 0."""
    q = match.query_map.sum(axis=0) if entry is None else match.query_map[entry]
    r = match.result_map.sum(axis=0) if entry is None else match.result_map[entry]
    top = max(float(q.max()), float(r.max()), 1e-12)
    return np.clip(q / top, 0.0, 1.0), np.clip(r / top, 0.0, 1.0)


def match_overlays(match: Any, entry: int | None, style: OverlayStyle) -> tuple[np.ndarray, np.ndarray]:
    """(query overlay, result overlay) of an entry's similarity maps (`match_heat`)."""
    q, r = match_heat(match, entry)
    return heat_overlay(match.query_display, q, style), heat_overlay(match.result_display, r, style)


def _centre(place: tuple[int, int], grid: tuple[int, int], tile: int, left: int) -> tuple[int, int]:
    """Pixel centre (x, y) of a grid cell on a `tile`-pixel square whose left edge is at `left`."""
    (i, j), (h, w) = place, grid
    return left + round((j + 0.5) * tile / w), round((i + 0.5) * tile / h)


def match_links(match: Any, entry: int | None, style: OverlayStyle, count: int, tile: int = LINK_TILE) -> np.ndarray:
    """The query and the result side by side (overlaid with the entry's maps) and lines between the
    centres of the `count` strongest pairs of places (thicker = stronger), numbered from 1."""
    import cv2

    query, result = (cv2.resize(img, (tile, tile), interpolation=cv2.INTER_LINEAR)
                     for img in match_overlays(match, entry, style))
    canvas = np.full((tile, 2 * tile + LINK_GAP, 3), 255, dtype=np.uint8)
    canvas[:, :tile], canvas[:, tile + LINK_GAP :] = query, result
    links = match.links[entry][:count]
    strongest = max((abs(v) for _, _, v in links), default=1.0) or 1.0
    grid_q, grid_r = match.query_map.shape[1:], match.result_map.shape[1:]
    colour = (255, 255, 255) if entry is None else tuple(int(c) for c in _entry_rgb(entry, len(match.entry_share)))
    for rank, (a, b, value) in reversed(list(enumerate(links))):  # the strongest drawn last, on top
        start, end = _centre(a, grid_q, tile, 0), _centre(b, grid_r, tile, tile + LINK_GAP)
        width = 1 + round(4 * max(value, 0.0) / strongest)
        cv2.line(canvas, start, end, (20, 20, 20), width + 2, cv2.LINE_AA)
        cv2.line(canvas, start, end, colour, width, cv2.LINE_AA)
        for point in (start, end):
            cv2.circle(canvas, point, 3 + width // 2, colour, -1, cv2.LINE_AA)
        cv2.putText(canvas, str(rank + 1), (start[0] + 5, start[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (20, 20, 20), 2, cv2.LINE_AA)
        cv2.putText(canvas, str(rank + 1), (start[0] + 5, start[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    return canvas


def match_figure(match: Any, entry: int | None, style: OverlayStyle, count: int) -> np.ndarray:
    """The download: `match_links` above every entry's pair of overlays with its share of the cosine."""
    import cv2

    from diablo.montage import montage

    links = match_links(match, entry, style, count)
    tiles, captions = [], []
    for n, share in enumerate(match.entry_share):
        q, r = match_overlays(match, n, style)
        tiles += [q, r]
        captions += [f"entry {n} query", f"entry {n} result {share:+.3f}"]
    grid = montage(tiles, captions, columns=min(len(tiles), 8), tile=120)
    width = max(links.shape[1], grid.shape[1])
    pad = [np.pad(img, ((0, 0), (0, width - img.shape[1]), (0, 0)), constant_values=255) for img in (links, grid)]
    title = np.full((28, width, 3), 255, dtype=np.uint8)
    which = "all entries" if entry is None else f"entry {entry}"
    cv2.putText(title, f"cosine {match.cosine:.4f} = sum of the entry shares; links: {which}", (6, 19),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.concatenate([title, *pad], axis=0)


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


def branch_shares_figure(shares: np.ndarray, similarities: Sequence[float]) -> go.Figure:
    """One chart for all results: a stacked bar per result (rank 1..k), one segment per branch
    (cosine_n / N), so each bar's height is the result's similarity."""
    shares = np.asarray(shares, dtype=float)  # (k, N)
    ranks = [f"{r + 1}." for r in range(len(shares))]
    fig = go.Figure([
        go.Bar(x=ranks, y=shares[:, n].tolist(), name=f"b{n}", marker_color=colour,
               hovertemplate=f"result %{{x}} branch {n}: %{{y:.3f}}<extra></extra>")
        for n, colour in enumerate(entry_colours(shares.shape[1]))
    ])
    fig.add_trace(go.Scatter(x=ranks, y=[float(s) for s in similarities], mode="markers", name="similarity",
                             marker=dict(symbol="line-ew-open", size=18, color="#222"),
                             hovertemplate="result %{x}: similarity %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="relative", height=260, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="result",
                      title=dict(text="Branch shares of each result (cosine_n / N; they sum to its similarity)",
                                 font=dict(size=13)), legend=dict(orientation="h", y=-0.3))
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
