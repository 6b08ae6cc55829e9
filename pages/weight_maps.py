"""Weight maps: where the U-Net's training loss puts weight (Eq. 2 of the paper), live.

One image and its objects; sliders for w0 and sigma and the class-weight mode; heat maps of the
total weight and of its two parts, and the total over the image. The distances to the two
nearest cells are computed once per image; a slider move only re-evaluates the formula.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from pages._common import choose_dataset, choose_sample, dataset_or_stop, load_sample_cached
from unet_core.studio import browse
from unet_core.studio import visualize as viz
from unet_core.studio.browse import BorderDistances
from unet_core.studio.sources import DataSource
from unet_core.studio.uploads import BrowseError

W0_RANGE = (0.0, 30.0)
SIGMA_RANGE = (1.0, 20.0)
# Heat maps larger than this are shown as block maxima (thin gaps between cells survive).
MAX_HEATMAP_SIDE = 512
CLASS_WEIGHT_MODES = {"balanced": "Balanced", "none": "None (all 1)"}


@st.cache_data(max_entries=16, show_spinner="Measuring distances between cells…")
def distances_of(source: DataSource, i: int) -> BorderDistances:
    """d1/d2 of one image, good for every slider position (computed once per image)."""
    return browse.border_distances_for(load_sample_cached(source, i).instances, W0_RANGE[1], SIGMA_RANGE[1])


@st.cache_data(max_entries=64, show_spinner=False)
def touching_pairs_of(source: DataSource, i: int) -> int:
    return browse.touching_pairs(load_sample_cached(source, i).instances)


def heatmap(values: np.ndarray, title: str, name: str, key: str, zmax: float | None = None) -> None:
    small, step = browse.block_max(values, MAX_HEATMAP_SIDE)
    block = f" (max of {step}×{step} px)" if step > 1 else ""
    fig = go.Figure(go.Heatmap(
        z=small, x=np.arange(small.shape[1]) * step, y=np.arange(small.shape[0]) * step,
        colorscale="Viridis", zmin=0.0, zmax=zmax if zmax else float(small.max()) or 1.0,
        colorbar={"thickness": 12, "len": 0.9},
        hovertemplate="x %{x}, y %{y}<br>" + name + " %{z:.2f}" + block + "<extra></extra>",
    ))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False, showgrid=False,
                     zeroline=False, constrain="domain")
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=430,
                      margin={"l": 0, "r": 0, "t": 36, "b": 0})
    st.plotly_chart(fig, width="stretch", key=key)


st.title("Weight maps")
st.caption("Where training puts weight: the U-Net paper's loss weights make the thin background gaps "
           "between touching cells count many times more than other pixels, so the network learns to "
           "keep cells apart.")

controls, maps = st.columns([1, 2], gap="large")
with controls:
    with st.container(border=True):
        chosen = choose_dataset("weights")
    source, ds = dataset_or_stop(chosen, "This data set has no usable image with a mask: see the **Datasets** page "
                                 "for its problems.")
    i = choose_sample(ds, "weights_image")
    objects_line = st.empty()  # filled once the image is loaded
    w0 = st.slider("w₀: border weight", *W0_RANGE, 10.0, 0.5, key="weights_w0",
                   help="How much the gap between two cells counts, on top of the class weight (paper: 10).")
    sigma = st.slider("σ: border width (pixels)", *SIGMA_RANGE, 5.0, 0.5, key="weights_sigma",
                      help="How fast the extra weight fades with the distance to the two nearest cells "
                      "(paper: about 5 pixels).")
    mode = st.radio("Class weights", list(CLASS_WEIGHT_MODES), format_func=CLASS_WEIGHT_MODES.__getitem__,
                    horizontal=True, key="weights_classes",
                    help="Balanced: background and object pixels count equally in total, however rare "
                    "one of them is. None: every pixel starts at 1.")
    class_weights = "balanced" if mode == "balanced" else None

try:
    view = load_sample_cached(source, i)
    distances = distances_of(source, i)
except BrowseError as exc:
    maps.error(f"{exc}.  \nThis image cannot be used: replace or remove the file, or pick another image.",
               icon=":material/error:")
    st.stop()

h, w = view.instances.shape
objects_line.metric("Objects", view.n_objects, help=f"in this {w} × {h} pixel image")
parts = browse.weight_parts(view.instances, distances, w0, sigma, class_weights)
summary = browse.weight_summary(view.instances, parts, class_weights)

with controls:
    st.caption(
        r"**The formula** (Ronneberger et al. 2015, Eq. 2): $w(x) = w_c(x) + w_0 \cdot "
        r"\exp\left(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\right)$, where $w_c$ balances how often "
        r"background "
        r"and object pixels occur and $d_1$, $d_2$ are the distances to the nearest and second-nearest cell. "
        "The second term is large only where two cells are close, and is added to background pixels only: "
        "touching objects need a line of background between them in the mask for it to act."
    )

with maps:
    numbers = st.columns(3)
    numbers[0].metric("Largest weight", f"{summary.max_weight:.2f}",
                      help=f"Mean weight over the image: {summary.mean_weight:.2f}")
    gap = "–" if summary.mean_border_in_gaps is None else f"{summary.mean_border_in_gaps:.2f}"
    numbers[1].metric("Border term in gaps", gap,
                      help=f"Mean border term over the {summary.gap_pixels} background pixels between two "
                      f"cells at most {summary.gap_width:.0f} px apart (d₁ + d₂ ≤ {summary.gap_width:.0f}).")
    numbers[2].metric("Class weights", f"{summary.w_background:.2f} / {summary.w_objects:.2f}",
                      help="w_c of background pixels / of object pixels")
    touching = touching_pairs_of(source, i)
    if touching:
        st.info(f"In this mask, {touching} pair{'s' if touching != 1 else ''} of objects touch with no "
                "background between them: the border term cannot act there, and training sees each such "
                "pair as one region. Masks with a line of background between touching objects (as in the paper) avoid "
                "this.", icon=":material/info:")
    top_left, top_right = st.columns(2)
    with top_left:
        heatmap(parts.total, "Total weight w", "weight", "weights_total")
    with top_right:
        base = viz.display_image(view.image)
        shown = viz.fit_for_screen(viz.heat_overlay(base, parts.total), MAX_HEATMAP_SIDE)
        st.markdown("**Total weight over the image**")
        st.image(shown, width="stretch", caption="The image shows through where the weight is low; "
                 "yellow = the largest weight.")
    bottom_left, bottom_right = st.columns(2)
    with bottom_left:
        heatmap(parts.w_c, "Class balance w_c", "class weight", "weights_wc",
                zmax=max(summary.w_background, summary.w_objects))
    with bottom_right:
        heatmap(parts.border, "Border term", "border term", "weights_border", zmax=max(w0, 1e-6))
