"""Segment: drop microscope images; get outlines, counts, measurements and the CLI's result files."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from pages._common import active_model, predictor_or_stop, show_no_model
from unet_core import visualize as viz
from unet_core.inference import InferenceOptions
from unet_core.instances import InstanceOptions
from unet_core.io import ImageFile, read_image_bytes
from unet_core.predict import Result, result_files, run, zip_files
from unet_core.runtime import Predictor

log = logging.getLogger(__name__)

IMAGE_TYPES = ["png", "jpg", "jpeg", "tif", "tiff"]
# Tile sizes offered besides "Automatic" (rounded down to sizes the model accepts).
TILE_TARGETS = (100, 196, 388, 516, 708, 900)
STATE_KEY = "segment_results"
EXAMPLE_NAME = "example_nuclei.png"

# Download buttons per output file, by the end of the name the CLI gives it: label, mime, help.
DOWNLOADS = {
    "_labels.png": ("Labels (PNG)", "image/png", (
        "One value per pixel: the class index (0 = background). It looks black in an ordinary "
        "viewer; in Fiji use Image > Adjust > Brightness/Contrast.")),
    "_labels.tif": ("Labels (TIFF stack)", "image/tiff",
                    "Class index per pixel (0 = background), per slice."),
    "_instances.tif": ("Objects (TIFF)", "image/tiff", (
        "Each object has its own number (1, 2, 3, …; 0 = background): a label image for Fiji, "
        "napari or CellProfiler.")),
    "_objects.csv": ("Measurements (CSV)", "text/csv",
                     "One row per object: area in pixels, centroid, bounding box, mean intensity."),
}

# The object table on screen: plain names, the most used measurements first (the CSV keeps the
# CLI's column names and order).
TABLE_COLUMNS = {
    "id": st.column_config.NumberColumn("Object", help="Its number in the Objects TIFF"),
    "area": st.column_config.NumberColumn("Area (px)"),
    "mean_intensity": st.column_config.NumberColumn("Mean intensity", format="%.1f",
                                                    help="In the image's own units (RGB: luminance)"),
    "centroid_x": st.column_config.NumberColumn("Centre x", format="%.1f"),
    "centroid_y": st.column_config.NumberColumn("Centre y", format="%.1f"),
    "bbox_min_x": st.column_config.NumberColumn("Left"),
    "bbox_min_y": st.column_config.NumberColumn("Top"),
    "bbox_max_x": st.column_config.NumberColumn("Right", help="Exclusive: first column after the object"),
    "bbox_max_y": st.column_config.NumberColumn("Bottom", help="Exclusive: first row after the object"),
}


@dataclass
class Source:
    """An image to segment: an upload or the example. ``key`` changes when the content does."""

    key: str
    name: str
    load: Callable[[], ImageFile]


@dataclass
class Outcome:
    """What segmenting one image gave: the result and its files, or an error message."""

    name: str
    error: str | None = None
    result: Result | None = None
    foreground: np.ndarray | None = None  # (Z, H, W) float16 probability of the object classes
    limits: tuple[float, float] = (0.0, 255.0)  # display contrast of the whole image or stack
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0


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


def upload_source(upload: UploadedFile) -> Source:
    return Source(upload.file_id, upload.name, lambda: read_image_bytes(upload.getvalue(), upload.name))


def example_source(pixels: np.ndarray) -> Source:
    return Source("example", EXAMPLE_NAME, lambda: ImageFile(EXAMPLE_NAME, pixels[None, :, :, None]))


def choose_inputs() -> list[Source]:
    """The uploader and, when the generator exists, the example image."""
    uploads = st.file_uploader(
        "Microscope images: drop files here or click Upload",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
        help="PNG, JPEG or TIFF, 8- or 16-bit; TIFF stacks are segmented slice by slice. "
        "Several files at once are fine. Larger than the limit? Use `python -m unet_core predict`.",
    )
    sources = [upload_source(u) for u in uploads or []]
    pixels = example_pixels()
    if pixels is not None and st.toggle("Add the example image (synthetic nuclei)", key="segment_example"):
        sources.append(example_source(pixels))
    return sources


def choose_options(predictor: Predictor) -> tuple[InferenceOptions, InstanceOptions]:
    """Tiling, test-time augmentation and object clean-up."""
    geometry = predictor.meta.geometry
    sizes = sorted({max(geometry.floor_output(t), geometry.min_tile) for t in TILE_TARGETS})
    tile = st.selectbox(
        "Tile size",
        [None, *sizes],
        format_func=lambda t: "Automatic" if t is None else f"{t} × {t} pixels",
        help="Images are processed in square pieces that fit in memory; the result is the same "
        "for every size. Automatic measures the fastest size on this computer (once).",
    )
    tta = st.checkbox(
        "Test-time augmentation",
        help="Average the network's answer over the 8 flips and rotations of each piece: "
        "slightly smoother outlines, 8 times slower.",
    )
    diameter = choose_diameter(predictor)
    auto_size = st.checkbox(
        "Automatic clean-up", value=True,
        help="Remove specks far smaller than a typical object and give back the thin outline the "
        "network leaves between touching objects (as chosen on validation images for this model).",
    )
    min_size = st.number_input(
        "Minimum object size (pixels)", min_value=0, value=0, step=10, disabled=auto_size,
        help="Smaller objects (debris, noise) are left out of the count and the table.",
    )
    drop_border = st.checkbox(
        "Leave out objects touching the image edge", help="They are cut off, so their size is wrong."
    )
    fill_holes = st.checkbox("Fill holes inside objects")
    return (
        # Probabilities are kept (as float16, half the memory) only to draw the probability map.
        InferenceOptions(tile=tile, tta=tta, keep_probs=True, probs_dtype="float16", diameter=diameter),
        InstanceOptions(min_size=None if auto_size else int(min_size), fill_holes=fill_holes,
                        drop_border=drop_border, expand=None if auto_size else 0),
    )


def choose_diameter(predictor: Predictor) -> str | float:
    """The object diameter: estimated from the image (default) or typed, for scale-aware models."""
    canonical = predictor.meta.diameter
    if not canonical:
        st.caption("This model works at the image's own scale (it declares no object size).")
        return "off"
    typed = st.number_input(
        "Object diameter (pixels)", min_value=0.0, max_value=1000.0, value=0.0, step=1.0, format="%.1f",
        key="segment_diameter",
        help=f"The typical diameter of one nucleus or cell in your image. 0 = estimate it from the image "
        f"(a first pass finds the objects and measures them). The image is rescaled so that objects are "
        f"{canonical:g} px across, the size this model was trained at; results come back at the "
        "image's own size.",
    )
    return float(typed) if typed > 0 else "auto"


# --------------------------------------------------------------------------- segmenting


def segment_one(source: Source, predictor: Predictor, options: InferenceOptions,
                instance_options: InstanceOptions, progress: Callable[[int, int], None]) -> Outcome:
    """Segment one image; any failure becomes a message, so the other images still run."""
    start = time.perf_counter()
    try:
        result = run(source.load(), predictor, options, instance_options, progress)
    except ValueError as exc:  # ImageReadError included: unreadable, empty, constant images
        # Engine messages start with the file name; the page prints the name itself.
        return Outcome(source.name, error=str(exc).removeprefix(f"{source.name}: "))
    except MemoryError:
        return Outcome(source.name, error="not enough memory for this image: choose a smaller tile size, "
                       "or segment it with `python -m unet_core predict`")
    except Exception as exc:  # a bug must not take the other images down; its traceback goes to the log
        log.exception("segmenting %s failed", source.name)
        return Outcome(source.name, error=f"unexpected error ({type(exc).__name__}: {exc}); please report it")
    seg = result.segmentation
    objects = seg.probs[:, predictor.meta.foreground_classes]
    foreground = objects.sum(axis=1, dtype=np.float32).astype(np.float16)
    # The probabilities have served the map; without them the downloads are the CLI's default set.
    result = replace(result, segmentation=replace(seg, probs=None))
    return Outcome(
        source.name,
        result=result,
        foreground=foreground,
        limits=viz.stretch_limits(result.image.data),
        files=result_files(result),
        seconds=time.perf_counter() - start,
    )


def segment_all(sources: list[Source], predictor: Predictor, options: InferenceOptions,
                instance_options: InstanceOptions, reuse: dict[str, Outcome]) -> dict[str, Outcome]:
    """Segment every source not in ``reuse`` (results of the same settings), with a progress bar."""
    bar = st.progress(0.0, text="Preparing…")
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
    bar.empty()
    return outcomes


# --------------------------------------------------------------------------- results


def download_buttons(files: dict[str, bytes], key: str) -> None:
    """One button per result file, named for what it holds."""
    columns = st.columns(len(files))
    for column, (name, data) in zip(columns, files.items(), strict=True):
        suffix = next(s for s in DOWNLOADS if name.endswith(s))
        label, mime, help_text = DOWNLOADS[suffix]
        column.download_button(label, data, file_name=name, mime=mime, help=f"`{name}`: {help_text}",
                               icon=":material/download:", on_click="ignore", key=f"{key}:{name}",
                               width="stretch")


def show_result(outcome: Outcome, class_names: str) -> None:
    """One image: numbers, downloads, image | overlay, probability map | object table."""
    result = outcome.result
    z, h, w = result.instances.shape
    st.divider()
    st.subheader(outcome.name)
    numbers = st.columns(4)
    numbers[0].metric("Objects", result.n_objects)
    numbers[1].metric("Image", f"{w} × {h}" + (f" × {z}" if z > 1 else ""),
                      help="width × height" + (" × slices" if z > 1 else "") + " in pixels")
    numbers[2].metric("Time", f"{outcome.seconds:.1f} s")
    tile_h, tile_w = result.segmentation.tile
    numbers[3].metric("Tile", f"{tile_w} × {tile_h} px", help="the pieces the image was processed in")
    seg = result.segmentation
    if seg.diameter_source in ("given", "estimated") and seg.diameter:
        st.caption(f"Object diameter **{seg.diameter:.1f} px** ({seg.diameter_source}); the image was segmented "
                   f"at {seg.factor:.2f}× its size.")
    for note in seg.notes:
        st.caption(note)
    download_buttons(outcome.files, key=outcome.name)

    s = st.slider("Slice", 1, z, 1, key=f"slice:{outcome.name}") - 1 if z > 1 else 0
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="segment_opacity",
                      help="0 shows only the outlines, 1 paints the objects solid.")
    base = viz.fit_for_screen(viz.display_image(result.image.data[s], outcome.limits))
    ids = viz.fit_for_screen(result.instances[s])
    left, right = st.columns(2)
    stretched = result.image.data.dtype != np.uint8
    left.image(base, width="stretch",
               caption="Image (contrast stretched for display)" if stretched else "Image")
    right.image(viz.overlay(base, ids, alpha), caption=f"{len(result.objects[s])} objects, one colour each",
                width="stretch")
    left.image(viz.fit_for_screen(viz.probability_image(outcome.foreground[s])), width="stretch",
               caption=f"Probability of {class_names}: dark = 0, yellow = 1")
    right.dataframe(result.objects[s], hide_index=True, width="stretch", height=420,
                    column_config=TABLE_COLUMNS, column_order=list(TABLE_COLUMNS))


def show_results(outcomes: list[Outcome], zip_bytes: bytes | None, class_names: str) -> None:
    """Errors first, then a summary of all images (several files), then the chosen image."""
    for outcome in outcomes:
        if outcome.error:
            st.error(
                f"**{outcome.name}** was not segmented: {outcome.error}.  \n"
                "Check that it is a PNG, JPEG or TIFF microscope image; if it opens in Fiji, save it "
                "again there as TIFF and retry. The other images were processed.",
                icon=":material/error:",
            )
    done = [o for o in outcomes if o.result is not None]
    if not done:
        return
    shown = done[0]
    if len(done) > 1:
        st.subheader(f"{len(done)} images")
        st.dataframe(
            [{"Image": o.name, "Objects": o.result.n_objects, "Seconds": round(o.seconds, 1)} for o in done],
            hide_index=True,
        )
        st.download_button("All results (ZIP)", zip_bytes, file_name="unet_studio_results.zip",
                           mime="application/zip", icon=":material/folder_zip:", on_click="ignore",
                           type="primary")
        names = [o.name for o in done]
        shown = done[names.index(st.selectbox("Show", names, key="segment_shown"))]
    show_result(shown, class_names)


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
settings = (predictor.fingerprint, repr(options), repr(instance_options))
state = st.session_state.get(STATE_KEY)
with inputs_col:
    sources = choose_inputs()
    keys = tuple(s.key for s in sources)
    st.caption(f"Model **{entry.label}** on {predictor.device_name}.")
    count = f"{len(sources)} image{'s' if len(sources) != 1 else ''}"
    if st.button(f"Segment {count}" if sources else "Segment", type="primary", disabled=not sources,
                 icon=":material/play_arrow:", key="segment_run"):
        reuse = state["outcomes"] if state and state["settings"] == settings else {}
        outcomes = segment_all(sources, predictor, options, instance_options, reuse)
        file_sets = [o.files for o in outcomes.values() if o.files]
        state = {"settings": settings, "keys": keys, "outcomes": outcomes,
                 "zip": zip_files(file_sets) if len(file_sets) > 1 else None}
        st.session_state[STATE_KEY] = state

if state and state["settings"] == settings and state["keys"] == keys:
    class_names = " or ".join(predictor.meta.class_names[k] for k in predictor.meta.foreground_classes)
    show_results(list(state["outcomes"].values()), state["zip"], class_names)
elif state and sources:
    st.info("The images or options changed: press **Segment** to update the results.",
            icon=":material/refresh:")
