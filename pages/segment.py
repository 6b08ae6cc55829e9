"""Segment: drop microscope images; get outlines, counts, measurements and the CLI's result files."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from pages._common import active_model, choose_tta, kept, predictor_or_stop, show_no_model
from unet_core.edits import EditError, ObjectEdit, parse_ids
from unet_core.inference import InferenceOptions, auto_tile, estimate_seconds, tile_is_measured
from unet_core.instances import DEFAULT_MIN_OBJECT_PROBABILITY, InstanceOptions
from unet_core.io import (
    CONVERT_FIRST,
    ImageFile,
    ImageHeader,
    ImageReadError,
    channels_for_model,
    encode_png,
    read_image_bytes,
    read_image_header_bytes,
)
from unet_core.look import LOOK_WORDS
from unet_core.predict import MAX_OUTLINE_OBJECTS
from unet_core.runtime import Predictor
from unet_core.studio import visualize as viz
from unet_core.studio.segmenting import (
    Outcome,
    Source,
    edit_outcome,
    lasso_outline,
    repost,
    result_state,
    results_zip,
    segment_one,
    training_set_zip,
    typed_outcomes,
    undo_edit,
)

log = logging.getLogger(__name__)

# Vendor formats are accepted by the uploader only to say how to convert them (a refused suffix
# would get nothing but the uploader's red icon).
IMAGE_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", *(suffix.lstrip(".") for suffix in CONVERT_FIRST)]
# Tile sizes offered besides "Automatic" (rounded down to sizes the model accepts).
TILE_TARGETS = (100, 196, 388, 516, 708, 900)
STATE_KEY = "segment_results"
#: session_state: file name -> the channels chosen for it (numbered from 1), kept for the session so
#: that the same file uploaded again keeps its channel.
CHANNELS_KEY = "segment_channels"
#: session_state: upload id -> (header, channel thumbnails); read once per upload, not per rerun.
LAYOUT_KEY = "segment_channel_layouts"
#: session_state: the pixel size (µm) typed for images whose file does not say (0 = unknown).
PIXEL_SIZE_KEY = "segment_pixel_size_um"
EXAMPLE_NAME = "example_nuclei.png"
#: The Stop button shown while images are segmented (True in the rerun its click starts).
STOP_KEY = "segment_stop"
#: Work estimated to take longer than this (seconds) is announced with a warning before it starts.
LONG_WORK_S = 60.0
#: At most this many objects get a hover marker in the viewer and this many rows in the table: a
#: browser chokes on hundreds of thousands (a whole slide, or a model wrong for the images); the
#: downloads always hold every object.
VIEWER_MARKERS = 5_000
TABLE_ROWS = 20_000

#: Download buttons side by side: more make their labels wrap on a laptop screen.
BUTTONS_PER_ROW = 3
# Download buttons per output file, by the end of the name the CLI gives it: label, mime, help.
DOWNLOADS = {
    "_labels.png": ("Labels (PNG)", "image/png", (
        "Objects white (255) on black (0) for a model with one object class; for a model with more "
        "classes, the class index of every pixel (0 = background: in Fiji use Image > Adjust > "
        "Brightness/Contrast).")),
    "_labels.tif": ("Labels (TIFF stack)", "image/tiff",
                    "Per slice: objects 255 on background 0 (one object class), else the class index."),
    "_instances.tif": ("Objects (TIFF)", "image/tiff", (
        "Each object has its own number (1, 2, 3, …; 0 = background): a label image for Fiji, "
        "napari or CellProfiler.")),
    "_objects.csv": ("Measurements (CSV)", "text/csv", (
        "One row per object: area in pixels (and µm² when the pixel size is known), centroid, bounding "
        "box, mean intensity; stacks: a slice column counting from 1, ids unique in the stack.")),
    "_outlines.geojson": ("Outlines for QuPath (GeoJSON)", "application/geo+json", (
        "One detection per object, named by its number, with its measurements: in QuPath, File > Import "
        "objects, or drag the file onto the image.")),
    "_RoiSet.zip": ("ROIs for Fiji (RoiSet.zip)", "application/zip", (
        "One ROI per object, named by its number: drag the file onto the image in Fiji, or ROI Manager > "
        "More > Open.")),
}

# The object table on screen: plain names, the most used measurements first (the CSV keeps the
# CLI's column names and order).
TABLE_COLUMNS = {
    "id": st.column_config.NumberColumn("Object", help="Its number in the Objects TIFF"),
    "area_um2": st.column_config.NumberColumn("Area (µm²)", format="%.2f"),
    "area": st.column_config.NumberColumn("Area (px)"),
    "mean_intensity": st.column_config.NumberColumn("Mean intensity", format="%.1f",
                                                    help="In the image's own units (RGB: luminance)"),
    "centroid_x": st.column_config.NumberColumn("Centre x", format="%.1f"),
    "centroid_y": st.column_config.NumberColumn("Centre y", format="%.1f"),
    "centroid_x_um": st.column_config.NumberColumn("Centre x (µm)", format="%.2f"),
    "centroid_y_um": st.column_config.NumberColumn("Centre y (µm)", format="%.2f"),
    "bbox_min_x": st.column_config.NumberColumn("Left"),
    "bbox_min_y": st.column_config.NumberColumn("Top"),
    "bbox_max_x": st.column_config.NumberColumn("Right", help="Exclusive: first column after the object"),
    "bbox_max_y": st.column_config.NumberColumn("Bottom", help="Exclusive: first row after the object"),
}


# --------------------------------------------------------------------------- inputs


@st.cache_data(show_spinner=False)
def example_pixels() -> np.ndarray | None:
    """A synthetic fluorescence image of nuclei, or None when the generator is not installed."""
    try:
        from unet_core.synthetic import SynthConfig, generate
    except ImportError:
        return None
    image, _ = generate(SynthConfig(), seed=1)
    return image


def upload_source(upload: UploadedFile, in_channels: int = 1, channels: tuple[int, ...] | None = None) -> Source:
    """An upload, read with the chosen ``channels`` (numbered from 1) for a model taking ``in_channels``."""
    key = upload.file_id + (f":channels={','.join(map(str, channels))}" if channels else "")
    header, _ = channel_layout(upload)
    return Source(key, upload.name,
                  lambda: channels_for_model(read_image_bytes(upload.getvalue(), upload.name), in_channels, channels),
                  header.pixels if header is not None else None)


def example_source(pixels: np.ndarray) -> Source:
    return Source("example", EXAMPLE_NAME, lambda: ImageFile(EXAMPLE_NAME, pixels[None, :, :, None]),
                  int(pixels.shape[0] * pixels.shape[1]))


def channel_layout(upload: UploadedFile) -> tuple[ImageHeader | None, list[np.ndarray]]:
    """The upload's header and, for images with separate channels, a thumbnail per channel.

    Kept per upload in the session: reruns (every slider move) do not read the file again. A file
    that cannot be read gives ``(None, [])``: its error is reported when it is segmented.
    """
    layouts = st.session_state.setdefault(LAYOUT_KEY, {})
    if upload.file_id not in layouts:
        header, thumbnails = None, []
        try:
            header = read_image_header_bytes(upload.getvalue(), upload.name)
            if header.mode == "channels" and header.shape[3] > 1:
                image = read_image_bytes(upload.getvalue(), upload.name)
                thumbnails = viz.channel_thumbnails(image.data[image.data.shape[0] // 2])
        except (ImageReadError, MemoryError):
            log.debug("no channel layout for %s", upload.name, exc_info=True)
        layouts[upload.file_id] = (header, thumbnails)
    return layouts[upload.file_id]


def choose_channels(upload: UploadedFile, in_channels: int) -> tuple[int, ...] | None:
    """For an image with more separate channels (not RGB) than the model takes: a warning, a
    thumbnail per channel and a picker. The choice (numbered from 1) or None while there is none;
    None also for images that need no choice."""
    header, thumbnails = channel_layout(upload)
    if header is None or header.mode != "channels" or header.shape[3] in (1, in_channels):
        return None
    n = header.shape[3]
    chosen_before = st.session_state.setdefault(CHANNELS_KEY, {}).get(upload.name)
    if chosen_before and (max(chosen_before) > n or len(chosen_before) != in_channels):
        chosen_before = None  # another file of the same name
    warning = st.empty()  # above the picker, filled once the picker says whether a choice is made
    if thumbnails:
        st.image(thumbnails, caption=[f"Channel {c}" for c in range(1, n + 1)], width=120)
    options = list(range(1, n + 1))
    label = f"Channel of {upload.name} to segment" if in_channels == 1 else f"Channels of {upload.name} to segment"
    widget_key = f"segment_channel:{upload.file_id}"
    if in_channels == 1:
        picked = st.selectbox(label, options, index=options.index(chosen_before[0]) if chosen_before else None,
                              format_func=lambda c: f"Channel {c}", placeholder="Choose a channel",
                              key=widget_key, help="Numbered from 1, as in Fiji.")
        chosen = (int(picked),) if picked is not None else None
    else:
        picked = st.multiselect(label, options, default=list(chosen_before or []), max_selections=in_channels,
                                format_func=lambda c: f"Channel {c}", key=widget_key,
                                help=f"{in_channels} channels, in the order the model was trained on.")
        chosen = tuple(int(c) for c in picked) if len(picked) == in_channels else None
    if chosen:
        st.session_state[CHANNELS_KEY][upload.name] = chosen
    else:
        what = "the channel" if in_channels == 1 else f"the {in_channels} channels"
        warning.warning(f"**{upload.name}** has {n} separate channels (not RGB) and the model takes "
                        f"{in_channels}: choose {what} with the objects (for nuclei, the DNA stain such as "
                        "DAPI) before segmenting.", icon=":material/warning:")
    return chosen


def choose_inputs(in_channels: int = 1) -> list[Source]:
    """The uploader, a channel picker per multi-channel image and, when the generator exists, the
    example image."""
    uploads = st.file_uploader(
        "Microscope images: drop files here or click Upload",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
        help="PNG, JPEG or TIFF, 8- or 16-bit; TIFF stacks are segmented slice by slice, multi-channel "
        "TIFFs on the channel you choose. Several files at once are fine. Larger than the limit? Use "
        "`python -m unet_core predict`. CZI, ND2 and LIF files: convert them to TIFF in Fiji first.",
    )
    sources = [upload_source(u, in_channels, choose_channels(u, in_channels)) for u in uploads or []]
    pixels = example_pixels()
    if pixels is not None and st.toggle("Add the example image (synthetic nuclei)",
                                         **kept("segment_example", False)):
        sources.append(example_source(pixels))
    return sources


def choose_options(predictor: Predictor) -> tuple[InferenceOptions, InstanceOptions]:
    """Tiling, test-time augmentation and object clean-up."""
    geometry = predictor.meta.geometry
    sizes = sorted({max(geometry.floor_output(t), geometry.min_tile) for t in TILE_TARGETS})
    # "auto", not None: a selectbox whose value is None shows no choice at all ("Choose an option").
    tiles = ["auto", *sizes]
    tile = st.selectbox(
        "Tile size",
        tiles,
        **kept("segment_tile", "auto", tiles),
        format_func=lambda t: "Automatic" if t == "auto" else f"{t} × {t} pixels",
        help="Images are processed in square pieces that fit in memory; the result is the same "
        "for every size. Automatic measures the fastest size on this computer (once).",
    )
    tta = choose_tta("segment_tta")
    diameter = choose_diameter(predictor)
    auto_size = st.checkbox(
        "Automatic clean-up", **kept("segment_auto_clean", True),
        help="Remove specks far smaller than a typical object (a tenth of its area) and objects the network "
        "is unsure of (mean probability under " + ", ".join(f"{p:g} in {look}" for look, p in
                                                     DEFAULT_MIN_OBJECT_PROBABILITY.items())
        + " images, told apart automatically), as chosen on images the nuclei model never saw. Models without "
        "an object diameter keep every object.",
    )
    min_size = st.number_input(
        "Minimum object size (pixels)", min_value=0, step=10, disabled=auto_size, **kept("segment_min_size", 0),
        help="Smaller objects (debris, noise) are left out of the count and the table.",
    )
    certainty = st.slider(
        "Minimum object probability", min_value=0.0, max_value=0.95, step=0.05, disabled=auto_size,
        **kept("segment_min_probability", 0.0),
        help="Objects whose mean foreground probability is lower are left out: what the network is unsure of, "
        "such as dark folds of cytoplasm. 0 keeps every object.",
    )
    drop_border = st.checkbox(
        "Leave out objects touching the image edge", **kept("segment_drop_border", False),
        help="They are cut off, so their size is wrong.",
    )
    split = st.checkbox(
        "Split merged nuclei", **kept("segment_split", True),
        help="Cut apart objects much larger than the image's typical one where their shape shows two or more "
        "nuclei (a waist between them). On by default for models with an object diameter, where it was "
        "measured to find more nuclei whole on new experiments; off keeps the objects as the network drew them.",
    )
    fill_holes = st.checkbox("Fill holes inside objects", **kept("segment_fill_holes", False))
    return (
        # Probabilities are kept (as float16, half the memory) only to draw the probability map.
        InferenceOptions(tile=None if tile == "auto" else tile, tta=tta, keep_probs=True, probs_dtype="float16",
                         diameter=diameter),
        InstanceOptions(min_size=None if auto_size else int(min_size), fill_holes=fill_holes,
                        drop_border=drop_border, expand=None if auto_size else 0,
                        min_object_probability=None if auto_size else float(certainty),
                        split_merged=None if split else False),
    )


def choose_diameter(predictor: Predictor) -> str | float:
    """The object diameter: estimated from the image (default) or typed, for scale-aware models."""
    canonical = predictor.meta.diameter
    if not canonical:
        st.caption("This model works at the image's own scale (it declares no object size).")
        return "off"
    typed = st.number_input(
        "Object diameter (pixels, 0 = estimate)", min_value=0.0, max_value=1000.0, step=1.0, format="%.1f",
        **kept("segment_diameter", 0.0),
        help=f"The typical diameter of one nucleus or cell in your image. 0 = estimate it from the image "
        f"(the model tries a few scales on part of the image and keeps the one it is most sure at). The image is rescaled so that objects are "
        f"{canonical:g} px across, the size this model was trained at; results come back at the "
        "image's own size.",
    )
    return float(typed) if typed > 0 else "auto"


# --------------------------------------------------------------------------- segmenting


def work_note(sources: list[Source], predictor: Predictor, options: InferenceOptions,
              reuse: dict[str, Outcome]) -> None:
    """The size of the images still to segment and, once this computer's speed is measured, about
    how long they take; a warning for long work (Stop is offered while it runs)."""
    todo = [s for s in sources if s.key not in reuse]
    pixels = sum(s.pixels or 0 for s in todo)
    if not todo or not pixels:
        return
    size = f"{pixels / 1e6:.1f} megapixels" if pixels >= 1e5 else f"{pixels:,} pixels"
    seconds = estimate_seconds(predictor, pixels, options)
    if seconds is None:
        st.caption(f"To segment: {size}. The first run measures this computer's speed.")
    elif seconds < LONG_WORK_S:
        st.caption(f"To segment: {size}, about {viz.duration_text(seconds)} on {predictor.device_name}.")
    else:
        st.warning(f"To segment: **{size}, about {viz.duration_text(seconds)}** on {predictor.device_name}. "
                   "You can stop it at any time (finished images are kept). For many or huge images, "
                   "`python -m unet_core predict` does the same without a browser.", icon=":material/schedule:")


def segment_all(sources: list[Source], predictor: Predictor, options: InferenceOptions,
                instance_options: InstanceOptions, reuse: dict[str, Outcome],
                keep_partial: Callable[[dict[str, Outcome]], None]) -> dict[str, Outcome]:
    """Segment every source not in ``reuse`` (results of the same settings), with a progress bar
    and a Stop button. Each finished image is handed to ``keep_partial`` at once: Stop (a rerun of the page,
    which ends this run at its next tile) loses only the image under way."""
    if options.tile is None and not tile_is_measured(predictor) and any(s.key not in reuse for s in sources):
        with st.spinner("Measuring the fastest tile size for this model on this computer: once, a few seconds…"):
            auto_tile(predictor)
    bar = st.progress(0.0, text="Preparing…")
    stop = st.empty()
    stop.button("Stop", icon=":material/stop:", key=STOP_KEY, help="Stop after the current tile; the images "
                "finished so far are kept.")
    outcomes: dict[str, Outcome] = {}
    n = len(sources)
    for i, source in enumerate(sources):
        if source.key in reuse:
            outcomes[source.key] = reuse[source.key]
            continue

        def progress(done: int, total: int, i: int = i, name: str = source.name) -> None:
            bar.progress(min(1.0, (i + done / total) / n),
                         text=f"{name}: tile {done} of {total} · image {i + 1} of {n}")

        outcomes[source.key] = segment_one(source, predictor, options, instance_options, progress)
        keep_partial(outcomes)
    bar.empty()
    stop.empty()
    return outcomes


# --------------------------------------------------------------------------- results


def download_buttons(files: dict[str, bytes], key: str) -> None:
    """One button per result file, named for what it holds, at most :data:`BUTTONS_PER_ROW` a row."""
    names = list(files)
    columns = [c for start in range(0, len(names), BUTTONS_PER_ROW) for c in st.columns(BUTTONS_PER_ROW)]
    for column, name in zip(columns, names):
        data = files[name]
        suffix = next(s for s in DOWNLOADS if name.endswith(s))
        label, mime, help_text = DOWNLOADS[suffix]
        column.download_button(label, data, file_name=name, mime=mime, help=f"`{name}`: {help_text}",
                               icon=":material/download:", on_click="ignore", key=f"{key}:{name}",
                               width="stretch")


def show_result(key: str, outcome: Outcome, class_names: str) -> None:
    """One image: numbers, downloads, image | overlay with corrections, probability map | object table."""
    result = outcome.result
    z, h, w = result.instances.shape
    st.divider()
    st.subheader(outcome.name)
    numbers = st.columns(4)
    numbers[0].metric("Objects", f"{result.n_objects:,}")
    numbers[1].metric("Image", f"{w} × {h}" + (f" × {z}" if z > 1 else ""),
                      help="width × height" + (" × slices" if z > 1 else "") + " in pixels")
    numbers[2].metric("Time", f"{outcome.seconds:.1f} s")
    tile_h, tile_w = result.segmentation.tile
    numbers[3].metric("Tile", f"{tile_w} × {tile_h} px", help="the pieces the image was processed in")
    seg = result.segmentation
    if seg.diameter_source in ("given", "estimated") and seg.diameter:
        st.caption(f"Object diameter **{seg.diameter:.1f} px** ({seg.diameter_source}); the image was segmented "
                   f"at {seg.factor:.2f}× its size.")
    if seg.look:
        st.caption(f"Looks like **{seg.look}** ({LOOK_WORDS[seg.look]}): automatic clean-up drops objects with a "
                   f"mean probability under {DEFAULT_MIN_OBJECT_PROBABILITY[seg.look]:g}.")
    for note in [*result.image.notes, *seg.notes]:  # the channel segmented, NaN pixels, tile changes
        st.caption(note)
    download_buttons(outcome.files, key=outcome.name)
    if result.n_objects > MAX_OUTLINE_OBJECTS:
        st.caption(f"More than {MAX_OUTLINE_OBJECTS:,} objects: no outlines for QuPath and Fiji (their object lists "
                   "slow to a halt); the Objects TIFF holds every object.")

    s = st.slider("Slice", 1, z, 1, key=f"slice:{outcome.name}") - 1 if z > 1 else 0
    alpha = st.slider("Overlay opacity", 0.0, 1.0, step=0.05, **kept("segment_opacity", 0.4),
                      help="0 shows only the outlines, 1 paints the objects solid.")
    shown = st.toggle("Show the objects", **kept("segment_show_objects", True))
    full = viz.display_image(result.image.data[s], outcome.limits)
    step = viz.screen_step(full.shape[:2])
    base = viz.fit_for_screen(full)
    ids = viz.fit_for_screen(result.instances[s])
    left, right = st.columns(2)
    stretched = result.image.data.dtype != np.uint8
    left.image(base, width="stretch",
               caption="Image (contrast stretched for display)" if stretched else "Image")
    with right:
        objects = result.objects[s]
        every = max(1, -(-len(objects) // VIEWER_MARKERS))
        # The key changes with every edit: a selection names objects by their ids before it.
        edits = len(st.session_state[STATE_KEY].get("edits", {}).get(key, []))
        event = st.plotly_chart(
            object_viewer(viz.overlay(base, ids, alpha) if shown else base, step, objects[::every]),
            config={"scrollZoom": True, "displaylogo": False}, key=f"viewer:{outcome.name}:{s}:{edits}",
            on_select="rerun", selection_mode=("points", "box", "lasso"))
        pointing = ("point at an object for its measurements" if every <= 1 else
                    f"point at a marked object (one in {every}) for its measurements")
        st.caption(f"{len(objects):,} objects, one colour each. Scroll to zoom, drag to pan, double-click "
                   f"to see the whole image; {pointing}. Click an object's dot to pick it (Shift for more), "
                   "or draw round several with Box or Lasso select in the chart's toolbar. A nucleus it "
                   "missed: draw round it with Lasso select and press Add.")
        picked = [int(p["customdata"][0]) for p in event.selection.points if p.get("customdata")]
        fix_objects(key, picked, lasso_outline(event.selection), s)
    left.image(viz.fit_for_screen(viz.probability_image(outcome.foreground[s])), width="stretch",
               caption=f"Probability of {class_names}: dark = 0, yellow = 1")
    physical = result.image.pixel_size_um is not None
    order = [c for c in TABLE_COLUMNS if physical or not c.endswith(("_um", "_um2"))]
    right.dataframe(result.objects[s][:TABLE_ROWS], hide_index=True, width="stretch", height=420,
                    column_config=TABLE_COLUMNS, column_order=order)
    if len(result.objects[s]) > TABLE_ROWS:
        right.caption(f"The first {TABLE_ROWS:,} of {len(result.objects[s]):,} objects; the CSV download has all.")


def fix_objects(key: str, picked: list[int], outline: tuple[tuple[float, float], ...], plane: int) -> None:
    """Remove, merge or split the objects picked in the viewer or typed by number, add the one
    drawn round by the viewer's lasso (``outline`` on slice ``plane``); undo the last edit. The
    files, the table and the counts follow (:func:`unet_core.studio.segmenting.edit_outcome`)."""
    state = st.session_state[STATE_KEY]
    edits = state.get("edits", {}).get(key, [])
    typed = st.text_input(
        "Objects to fix", key=f"fix:{key}:{len(edits)}", placeholder="numbers, e.g. 3, 12 or 20-25",
        help="Objects to remove, merge or split, by their number (the table's Object column; point at an object "
        "in the viewer to see it). Objects picked in the viewer are added.")
    try:
        chosen = sorted(set(picked) | set(parse_ids(typed)))
    except EditError as exc:
        st.error(str(exc), icon=":material/error:")
        chosen = sorted(set(picked))
    if chosen:
        st.caption(f"Picked: {', '.join(map(str, chosen[:30]))}{' …' if len(chosen) > 30 else ''}")
    # Two rows: five buttons side by side in the half-page column cut their labels short.
    (remove, merge, split), (add, undo, _) = st.columns(3), st.columns(3)
    action = ("remove" if remove.button("Remove", disabled=not chosen, icon=":material/delete:", key=f"remove:{key}",
                                        help="Take the picked objects out: debris, or not a nucleus.", width="stretch")
              else "merge" if merge.button("Merge", disabled=len(chosen) < 2, icon=":material/join:",
                                           key=f"merge:{key}", width="stretch",
                                           help="Make the picked objects one: a nucleus cut in two.")
              else "split" if split.button("Split", disabled=not chosen, icon=":material/call_split:",
                                           key=f"split:{key}", width="stretch",
                                           help="Cut each picked object where its outline has a waist: touching "
                                           "nuclei drawn as one.")
              else "add" if add.button("Add", disabled=len(outline) < 3, icon=":material/draw:", key=f"add:{key}",
                                       width="stretch", help="Make what you drew round with Lasso select a new "
                                       "object: a nucleus the network missed (its background pixels only).")
              else None)
    if undo.button("Undo", disabled=not edits, icon=":material/undo:", key=f"undo:{key}", width="stretch",
                   help=f"Undo the last edit ({edits[-1].describe()})." if edits else "Nothing to undo."):
        st.session_state[STATE_KEY] = undo_edit(state, key)
        st.rerun()
    if action:
        try:
            edit = (ObjectEdit("add", outline=outline, plane=plane) if action == "add"
                    else ObjectEdit(action, tuple(chosen)))
            st.session_state[STATE_KEY] = edit_outcome(state, key, edit)
        except EditError as exc:
            st.error(str(exc), icon=":material/error:")
            return
        st.rerun()
    if edits:
        st.caption("Corrected by hand: " + "; ".join(e.describe() for e in edits) + " (numbers as they were then). "
                   "The counts, the table and the downloads include the corrections; changing the clean-up "
                   "options starts again from the network's objects.")


def object_viewer(rgb: np.ndarray, step: int, objects: list[dict]) -> go.Figure:
    """The overlay as a zoomable, pannable figure in the image's own pixel coordinates (``rgb`` is
    every ``step``-th pixel), with each object's id and measurements on hover at its centre."""
    height, width = rgb.shape[:2]
    fig = go.Figure(go.Image(source="data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode(),
                             x0=0, y0=0, dx=step, dy=step, hoverinfo="skip"))
    if objects:
        area_um2 = [o.get("area_um2") for o in objects]
        unit = [f"{a:.1f} µm², " if a is not None else "" for a in area_um2]
        fig.add_trace(go.Scatter(
            x=[o["centroid_x"] for o in objects], y=[o["centroid_y"] for o in objects], mode="markers",
            marker={"size": 5, "color": "white", "opacity": 0.5, "line": {"width": 1, "color": "black"}},
            customdata=[[o["id"], o["area"], u, o["mean_intensity"]] for o, u in zip(objects, unit)],
            hovertemplate="Object %{customdata[0]}<br>%{customdata[2]}%{customdata[1]} px<br>"
                          "mean intensity %{customdata[3]:.1f}<br>centre (%{x:.0f}, %{y:.0f})<extra></extra>",
        ))
    fig.update_xaxes(visible=False, range=[0, width * step])
    fig.update_yaxes(visible=False, range=[height * step, 0], scaleanchor="x")
    fig.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, dragmode="pan", showlegend=False,
                      height=max(250, min(700, round(480 * height / max(width, 1)))))
    return fig


def choose_pixel_size(outcomes: list[Outcome]) -> float:
    """A typed pixel size (µm) for the results whose file has none; 0 when there is none or none
    is needed. Kept in the session (:data:`PIXEL_SIZE_KEY`)."""
    unknown = [o.name for o in outcomes if o.result is not None and o.result.image.pixel_size_um is None]
    if not unknown:
        return 0.0
    names = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
    typed = st.number_input(
        "Pixel size (µm)", min_value=0.0, max_value=1000.0, value=float(st.session_state.get(PIXEL_SIZE_KEY, 0.0)),
        step=0.01, format="%.4f", key="segment_pixel_size",
        help="The width of one pixel in micrometres, for areas in µm² in the table and the CSV of the "
        f"images whose file does not say (no TIFF resolution or OME pixel size): {names}. 0 = unknown, "
        "measurements in pixels only. Fiji shows it in Image > Properties.")
    st.session_state[PIXEL_SIZE_KEY] = float(typed)
    return float(typed)


def show_results(outcomes: dict[str, Outcome], class_names: str) -> None:
    """Errors first, then a summary of all images (several files), then the chosen image
    (``outcomes`` by the key of their image)."""
    for outcome in outcomes.values():
        if outcome.error:
            st.error(
                f"**{outcome.name}** was not segmented: {outcome.error}.  \n"
                f"{outcome.advice + ' ' if outcome.advice else ''}The other images were processed.",
                icon=":material/error:",
            )
    done = {key: o for key, o in outcomes.items() if o.result is not None}
    if not done:
        return
    keys = list(done)
    shown = keys[0]
    if len(done) > 1:
        st.subheader(f"{len(done)} images")
        st.dataframe(
            [{"Image": o.name, "Objects": o.result.n_objects, "Seconds": round(o.seconds, 1)} for o in done.values()],
            hide_index=True,
        )
        st.download_button("All results (ZIP)", lambda: results_zip(done.values()), file_name="unet_studio_results.zip",
                           mime="application/zip", icon=":material/folder_zip:", on_click="ignore",
                           type="primary")
        names = [o.name for o in done.values()]
        shown = keys[names.index(st.selectbox("Show", names, key="segment_shown"))]
    show_result(shown, done[shown], class_names)
    st.download_button(
        "Training set (ZIP)", lambda: training_set_zip(done.values()), file_name="unet-studio-training.zip",
        mime="application/zip", icon=":material/school:", on_click="ignore", key="segment_training_set",
        help=f"The {'images' if len(done) > 1 else 'image'} with {'their' if len(done) > 1 else 'its'} objects as "
        "corrected here, as a data set (images/ and masks/). Upload it on the Train page (Data: a zip of your "
        "data set; Start from: this model) to fine-tune the model on your own images.")


# --------------------------------------------------------------------------- page

st.title("Segment")
st.caption("Find, count and measure cells or nuclei in your images.")

entry = active_model()
if entry is None:
    show_no_model()
    st.stop()
predictor = predictor_or_stop(entry, "Choose another model in the sidebar, or export it again with "
                                     "`python -m unet_core export`.")

inputs_col, options_col = st.columns([3, 2], gap="large")
with options_col, st.expander("Options", expanded=True, icon=":material/tune:"):
    options, instance_options = choose_options(predictor)
# The network pass depends on these; the post-processing (``post``) is redone live from the labels.
settings = (predictor.fingerprint, repr(options))
post = repr(instance_options)
state = st.session_state.get(STATE_KEY)
with inputs_col:
    sources = choose_inputs(predictor.meta.unet.in_channels)
    keys = tuple(s.key for s in sources)
    st.caption(f"Model **{entry.label}** on {predictor.device_name}.")
    same = bool(state) and state["settings"] == settings and state["post"] == post
    reuse = {key: o for key, o in state["outcomes"].items() if not o.let_go} if same else {}
    note = st.empty()  # the work still to do: gone once it is done
    with note.container():
        work_note(sources, predictor, options, reuse)
    count = f"{len(sources)} image{'s' if len(sources) != 1 else ''}"
    if st.button(f"Segment {count}" if sources else "Segment", type="primary", disabled=not sources,
                 icon=":material/play_arrow:", key="segment_run"):

        def keep_partial(done: dict[str, Outcome]) -> None:
            st.session_state[STATE_KEY] = result_state(settings, post, keys, done, partial=True)

        state = result_state(settings, post, keys, segment_all(sources, predictor, options, instance_options,
                                                                reuse, keep_partial))
        st.session_state[STATE_KEY] = state
        note.empty()

# The upload box empties when the user visits another page (Streamlit cannot refill it), so with no
# file in it the last results stay on show rather than being thrown away; so do the finished
# images of a stopped run.
current = bool(state) and state["settings"] == settings and (
    state["keys"] == keys or not sources or state.get("partial", False))
if current and state.get("post") != post:
    state = repost(state, predictor, instance_options, post)
    st.session_state[STATE_KEY] = state
if current and state.get("partial"):
    done = len(state["outcomes"])
    st.info(f"Stopped after {done} of {len(state['keys'])} image{'s' if len(state['keys']) != 1 else ''}. "
            "Press **Segment** to do the rest (finished images are not done again).", icon=":material/stop:")

if current:
    if not sources:
        st.caption(f"Results of your last run ({', '.join(o.name for o in state['outcomes'].values())}). The upload box empties when you "
                   "open another page: drop the files again to segment them anew.")
    class_names = " or ".join(predictor.meta.class_names[k] for k in predictor.meta.foreground_classes)
    show_results(typed_outcomes(state, choose_pixel_size(list(state["outcomes"].values()))), class_names)
elif state and sources:
    st.info("The images or options changed: press **Segment** to update the results.",
            icon=":material/refresh:")
