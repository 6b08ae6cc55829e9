"""The Train page's charts: the training loss and the validation curves of a run (plotly)."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from pages._common import metric_label
from unet_core.studio import runs, visualize

LOSS_COLOR, SMOOTH_COLOR = "#9fb3c8", "#0f766e"
VAL_COLORS = ("#f58518", "#4c78a8", "#54a24b")
MAX_POINTS = 3000  # points per curve sent to the browser


def loss_figure(info: runs.RunInfo) -> go.Figure:
    """Each step's loss and its running average, framed so that early spikes do not flatten them."""
    keep = visualize.thin(len(info.steps), MAX_POINTS)
    smooth = visualize.smooth(info.losses)
    steps = [info.steps[i] for i in keep]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[info.losses[i] for i in keep], name="each step", mode="lines",
                             line={"color": LOSS_COLOR, "width": 1},
                             hovertemplate="step %{x}: loss %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=steps, y=[smooth[i] for i in keep], name="average", mode="lines",
                             line={"color": SMOOTH_COLOR, "width": 2.5},
                             hovertemplate="step %{x}: average loss %{y:.4f}<extra></extra>"))
    # A log axis once the average loss spans more than a factor 20, framed on the average (single
    # steps with a tiny loss would otherwise stretch it over decades).
    positive = [v for v in smooth if v > 0]
    log_axis = bool(positive) and max(positive) / min(positive) > 20
    fig.update_layout(
        title={"text": "Training loss (lower is better)", "font": {"size": 14}},
        xaxis_title="step", yaxis_title="loss" + (" (log scale)" if log_axis else ""), height=320,
        margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_range=x_range(info),
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    # The top of the axis leaves out the few largest single-step losses (early spikes would flatten
    # everything else); the average curve always fits.
    top = max(max(smooth), quantile(info.losses, 0.98)) * 1.15 if len(info.losses) >= 20 else max(info.losses) * 1.1
    if log_axis:
        fig.update_yaxes(type="log", tickformat="~g", range=[math.log10(min(positive) / 3), math.log10(top)])
    elif top > 0:
        fig.update_yaxes(range=[0, top])
    return fig


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (the nearest-rank value at or below it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def x_range(info: runs.RunInfo) -> list[float]:
    """The steps done so far (the progress bar shows how many are left), with room for a marker."""
    return [0, max(info.step, 1) * 1.03]


def val_figure(info: runs.RunInfo) -> go.Figure:
    """The validation curves (:attr:`~unet_core.studio.runs.RunInfo.curve_metrics`), the best model starred."""
    fig = go.Figure()
    for key, color in zip(info.curve_metrics, VAL_COLORS):
        pairs = [(s, v.get(key)) for s, v in zip(info.val_steps, info.val) if v.get(key) is not None]
        fig.add_trace(go.Scatter(x=[s for s, _ in pairs], y=[v for _, v in pairs], mode="lines+markers",
                                 name=metric_label(key, arrow=True), line={"color": color, "width": 2},
                                 hovertemplate="step %{x}: %{y:.3f}<extra>" + metric_label(key) + "</extra>"))
    if info.best and info.best.get("step") is not None and isinstance(info.best.get("value"), (int, float)):
        fig.add_trace(go.Scatter(x=[info.best["step"]], y=[info.best["value"]], mode="markers", name="best model",
                                 marker={"symbol": "star", "size": 16, "color": "#e45756"},
                                 hovertemplate="best model: step %{x}<extra></extra>"))
    n_val = f" {info.n_val}" if info.n_val else ""
    fig.update_layout(
        title={"text": f"Validation on the{n_val} held-out images (↑ higher / ↓ lower is better)",
               "font": {"size": 14}},
        xaxis_title="step", yaxis_title="score", height=320, yaxis_range=[0, 1.02],
        xaxis_range=x_range(info), margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.25, "x": 0},
    )
    return fig
