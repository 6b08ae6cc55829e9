"""Datasets: look at training images and their masks before training.

The synthetic generator, a folder under the data root or an uploaded zip; a thumbnail grid, one
image with its objects, the whole data set's statistics, the train/validation split and every
file the data set had to leave out.
"""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._common import (
    choose_dataset,
    choose_sample,
    dataset_or_stop,
    load_sample_cached,
    md_escape,
    open_source_cached,
    short_name,
)
from unet_core.datasets import Dataset
from unet_core.studio import browse
from unet_core.studio import visualize as viz
from unet_core.studio.browse import DatasetStats, SampleView
from unet_core.studio.sources import DataSource
from unet_core.studio.uploads import BrowseError

log = logging.getLogger(__name__)

N_THUMBNAILS = 12
THUMB_COLUMNS = 3
IMAGE_KEY = "datasets_image"
TRAIN_COLOR, VAL_COLOR = "#4c78a8", "#f58518"
VAL_RGB = (0xF5, 0x85, 0x18)

# How the page explains layouts and mask encodings (a short name, then what it means).
LAYOUTS = {
    "generic": "images in `images/`, each mask of the same name in `masks/`",
    "isbi2012": "ISBI 2012: cell interiors white, the membranes between cells black",
    "ctc": "Cell Tracking Challenge: frames in `01/`, masks in `01_GT/SEG/` or `01_ST/SEG/`",
    "synthetic": "made here by the synthetic generator, with the exact outline of every cell",
}
ENCODINGS = {
    "instance_ids": ("one number per object", ("each object has its own number (0 = background), so "
                     "touching objects stay apart")),
    "binary_0_255": ("black & white", ("white (255) = object, black (0) = background; touching objects "
                     "count as one unless background separates them")),
    "binary_0_1": ("0 / 1", ("1 = object, 0 = background; touching objects count as one unless "
                   "background separates them")),
    "class_indexes": ("class numbers", ("one number per class (0 = background, 1, 2, … = classes); each "
                      "connected region is one object")),
}


# --------------------------------------------------------------------------- cached work


@st.cache_data(max_entries=16, show_spinner="Measuring every mask…")
def stats_of(source: DataSource) -> DatasetStats:
    return browse.dataset_stats(open_source_cached(source))


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail_of(source: DataSource, i: int, validation: bool) -> np.ndarray | None:
    try:
        view = load_sample_cached(source, i)
    except BrowseError:
        return None
    return browse.thumbnail(view.image, view.instances, frame=VAL_RGB if validation else None)


def show_image(key: str, name: str) -> None:
    """Thumbnail button callback: show that image (runs before the selectbox is drawn)."""
    st.session_state[key] = name


# --------------------------------------------------------------------------- sections


def show_summary(ds: Dataset, stats: DatasetStats, problems: list[str]) -> None:
    n_val = len(ds.split_rule.val_indices(len(ds)))
    masks_short, masks_long = ENCODINGS.get(ds.mask_encoding, (ds.mask_encoding, ds.mask_encoding))
    cols = st.columns(4)
    cols[0].metric("Images", len(ds))
    cols[1].metric("All objects", f"{stats.areas.size:,}",
                   help=f"in the first {len(stats.rows)} images" if stats.capped else "in all images")
    cols[2].metric("For validation", n_val, help="images held out to check training; see *Split* below")
    cols[3].metric("Problems", len(problems), help="files left out or doubtful; listed below")
    sizes = stats.size_counts()
    size_text = (f"all {sizes[0][0]} px" if len(sizes) == 1
                 else f"{len(sizes)} different sizes, {sizes[0][0]} px the most common")
    classes = f" {ds.n_classes - 1} object classes." if ds.mask_encoding == "class_indexes" else ""
    st.markdown(f"**Layout:** {LAYOUTS.get(ds.layout, ds.layout)}.  \n"
                f"**Masks:** {masks_short}: {masks_long}.{classes}  \n"
                f"**Image sizes:** {size_text}.")


def show_problems(problems: list[str]) -> None:
    if not problems:
        return
    lines = [f"- {md_escape(p)}" for p in problems]
    head = (f"**{len(problems)} file{'s' if len(problems) != 1 else ''} left out or doubtful.** The other "
            "images are used as they are. Fix, convert or remove these files, then reload the page:")
    st.warning("\n".join([head, "", *lines[:8]]), icon=":material/warning:")
    if len(lines) > 8:
        with st.expander(f"{len(lines) - 8} more"):
            st.markdown("\n".join(lines[8:]))


def show_thumbnails(source: DataSource, ds: Dataset, val: set[int]) -> None:
    n = min(N_THUMBNAILS, len(ds))
    st.markdown("**First images**, objects outlined; an orange frame marks validation images")
    columns = st.columns(THUMB_COLUMNS)
    for i in range(n):
        name = ds.samples[i].name
        with columns[i % THUMB_COLUMNS]:
            thumb = thumbnail_of(source, i, i in val)
            if thumb is None:
                st.caption("cannot be read")
            else:
                st.image(thumb, width="stretch")
            st.button(f"{i + 1}. {short_name(name, 14)}", key=f"datasets_thumb_{i}", on_click=show_image,
                      args=(IMAGE_KEY, name), type="tertiary", help=f"Show {name} on the right")
    if len(ds) > n:
        st.caption(f"The first {n} of {len(ds)} images; pick any image in the list on the right.")


def histogram_figure(view: SampleView) -> go.Figure:
    hist = browse.intensity_histogram(view.image, view.instances)
    fig = go.Figure()
    traces = ((hist.background, "background", "#888888"), (hist.objects, "objects", "#2ca02c"))
    for counts, name, color in traces:
        total = counts.sum()
        if total:
            fig.add_trace(go.Scatter(
                x=hist.centers, y=100.0 * counts / total, name=name, mode="lines", fill="tozeroy",
                line={"color": color, "width": 1.5},
                hovertemplate="intensity %{x:.0f}<br>%{y:.2f} % of " + name + " pixels<extra></extra>",
            ))
    fig.update_layout(
        title={"text": "Intensities: background and objects", "font": {"size": 14}},
        xaxis_title="intensity" + (" (luminance)" if view.image.shape[-1] >= 3 else ""),
        yaxis_title="% of pixels", height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def show_one_image(source: DataSource, ds: Dataset, val: set[int]) -> None:
    i = choose_sample(ds, IMAGE_KEY)
    try:
        view = load_sample_cached(source, i)
    except BrowseError as exc:
        st.error(f"{md_escape(str(exc))}.  \nThis image cannot be shown or used for training: replace or "
                 "remove the file. The other images are fine.", icon=":material/error:")
        return
    except Exception as exc:  # a bug must not show a traceback; it goes to the log
        log.exception("showing sample %d of %s failed", i, source)
        st.error(f"Unexpected error while reading this image ({type(exc).__name__}: {exc}); please report "
                 "it.",
                 icon=":material/error:")
        return
    h, w = view.instances.shape
    part = "validation" if i in val else "training"
    cols = st.columns([1, 1, 2])
    cols[0].metric("Objects", view.n_objects)
    cols[1].metric("Median area", f"{np.median(view.areas):.0f} px" if view.n_objects else "–",
                   help="median object area in pixels")
    with cols[2]:
        channels = view.image.shape[-1]
        st.markdown(f"{w} × {h} pixels, {channels} channel{'s' if channels > 1 else ''}, "
                    f"{view.image.dtype}  \nused for **{part}**")
        auto = st.toggle("Auto contrast", value=True, key="datasets_contrast",
                         help="Stretch the display between the darkest and brightest pixels, as Fiji's Auto "
                         "does. Only the display changes.")
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.35, 0.05, key="datasets_opacity",
                      help="0 shows only the outlines, 1 paints the objects solid.")
    limits = browse.contrast_limits(view.image) if auto else None
    base = viz.fit_for_screen(viz.display_image(view.image, limits))
    ids = viz.fit_for_screen(view.instances)
    left, right = st.columns(2)
    stretched = auto or view.image.dtype != np.uint8
    left.image(base, width="stretch", caption="Image" + (" (contrast stretched)" if stretched else ""))
    right.image(viz.overlay(base, ids, alpha), width="stretch",
                caption=f"Mask: {view.n_objects} objects, one colour each")
    st.plotly_chart(histogram_figure(view), width="stretch", key="datasets_histogram")


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks between low and high, for a log axis people can read (10, 20, 50, 100, …)."""
    decades = range(int(np.floor(np.log10(max(low, 1e-9)))), int(np.ceil(np.log10(high))) + 1)
    ticks = [m * 10.0**e for e in decades for m in (1, 2, 5)]
    return [t for t in ticks if low <= t <= high]


def stats_figures(stats: DatasetStats) -> list[tuple[str, go.Figure]]:
    layout = {"height": 300, "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "showlegend": False}
    sizes = stats.size_counts()[:20]
    fig_sizes = go.Figure(go.Bar(x=[s for s, _ in sizes], y=[n for _, n in sizes], marker_color=TRAIN_COLOR,
                                 hovertemplate="%{x} px: %{y} images<extra></extra>"))
    fig_sizes.update_layout(title={"text": "Image sizes (width × height)", "font": {"size": 14}},
                            yaxis_title="images", xaxis_type="category", **layout)

    rows = stats.rows
    if len(rows) <= 60:  # few images: one bar each, coloured by their part of the split
        fig_objects = go.Figure(go.Bar(
            x=[r.index + 1 for r in rows], y=[r.n_objects for r in rows],
            marker_color=[VAL_COLOR if r.part == "validation" else TRAIN_COLOR for r in rows],
            customdata=[[r.name, r.part] for r in rows],
            hovertemplate="image %{x}: %{y} objects<br>%{customdata[0]} (%{customdata[1]})<extra></extra>",
        ))
        fig_objects.update_layout(xaxis_title="image (orange = validation)", yaxis_title="objects")
    else:
        fig_objects = go.Figure(go.Histogram(x=[r.n_objects for r in rows], marker_color=TRAIN_COLOR,
                                             hovertemplate="%{x} objects: %{y} images<extra></extra>"))
        fig_objects.update_layout(xaxis_title="objects in an image", yaxis_title="images")
    fig_objects.update_layout(title={"text": "Objects per image", "font": {"size": 14}}, **layout)

    edges, counts, logarithmic = browse.area_histogram(stats.areas)
    fig_areas = go.Figure(go.Scatter(
        x=np.repeat(edges, 2)[1:-1], y=np.repeat(counts, 2), mode="lines", fill="tozeroy",
        line={"color": TRAIN_COLOR, "width": 1.5}, hovertemplate="%{x:.0f} px²: %{y} objects<extra></extra>",
    ))
    fig_areas.update_layout(title={"text": "Object areas", "font": {"size": 14}}, yaxis_title="objects",
                            xaxis_title="area in pixels" + (" (log scale)" if logarithmic else ""), **layout)
    if logarithmic:
        ticks = log_ticks(edges[0], edges[-1])
        fig_areas.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:,.0f}" for t in ticks])
    figures = [("objects", fig_objects), ("areas", fig_areas)]
    diameters = stats.diameters()
    if diameters.size > 1:
        fig_diam = go.Figure(go.Histogram(x=diameters, nbinsx=30, marker_color=TRAIN_COLOR,
                                          hovertemplate="%{x} px: %{y} images<extra></extra>"))
        spread = float(diameters.max() / max(diameters.min(), 1e-6))
        fig_diam.update_layout(
            title={"text": f"Object diameter per image (median; {spread:.1f}x range)", "font": {"size": 14}},
            xaxis_title="median diameter of the objects in an image (px)", yaxis_title="images", **layout)
        figures.append(("diameters", fig_diam))
    if len(sizes) > 1:  # one size is said in words above; a single bar says nothing more
        figures.insert(0, ("sizes", fig_sizes))
    return figures


def show_whole_dataset(ds: Dataset, stats: DatasetStats) -> None:
    st.subheader("The whole data set")
    tab_stats, tab_split = st.tabs(["Statistics", "Split"])
    with tab_stats:
        if stats.capped:
            st.caption(f"From the first {len(stats.rows) + len(stats.failed)} of {stats.n_samples} images.")
        figures = stats_figures(stats)
        for column, (key, fig) in zip(st.columns(len(figures)), figures):
            column.plotly_chart(fig, width="stretch", key=f"datasets_{key}")
    with tab_split:
        st.markdown(f"**Validation:** {browse.describe_split(ds.split_rule, len(ds), ds.groups)}. Training never sees "
                    "these images; they measure how well the model does on images it has not learnt from.")
        st.dataframe(browse.split_rows(ds), hide_index=True, width="stretch", height=320,
                     column_config={"#": st.column_config.NumberColumn("#", width="small")})


# --------------------------------------------------------------------------- page

st.title("Datasets")
st.caption("Check training images and their masks before you train: are the objects outlined where they "
           "should be, how many are there, how large, and which files have problems.")

with st.container(border=True):
    chosen = choose_dataset("datasets")
source, ds = dataset_or_stop(chosen, "**{title}** has no usable image with a mask. Every image needs a mask of "
                             "the same size and name; see the list below.", lambda d: show_problems(d.problems))

stats = stats_of(source)
problems = [*ds.problems, *stats.failed]
val = set(ds.split_rule.val_indices(len(ds)))
show_summary(ds, stats, problems)
show_problems(problems)

grid_col, view_col = st.columns([2, 3], gap="large")
with view_col:
    show_one_image(source, ds, val)
with grid_col:
    show_thumbnails(source, ds, val)

show_whole_dataset(ds, stats)
