"""What every page shares: the page table, the active model and its cached predictor.

Not a page itself (the leading underscore says so); ``app.py`` and the pages import it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from unet_core.config import SWITCH_CHOICES
from unet_core.datasets import Dataset, DatasetError, DatasetSummary, list_datasets
from unet_core.inference import TTA_AUTO_PIXELS
from unet_core.paths import DATA_ENV, data_root
from unet_core.runtime import ModelLoadError, Predictor, device_summary, load_predictor
from unet_core.studio.browse import SampleView, load_sample
from unet_core.studio.registry import ModelEntry, default_model, list_models, read_card
from unet_core.studio.sources import DataSource, folder_version, open_source
from unet_core.studio.uploads import BrowseError, OutsideRoot, ZipRejected, extract_upload, resolve_in_root

APP_ROOT = Path(__file__).resolve().parent.parent


def run_through_app() -> None:
    """Make Streamlit run ``app.py`` (the menu, model chooser, device line) for every page.

    Because a ``pages/`` folder sits beside ``app.py``, Streamlit starts in its old multipage
    mode: until ``app.py`` has called ``st.navigation`` once in this server process, a deep link
    such as ``/segment`` runs ``pages/segment.py`` on its own, under a raw list of the folder's
    scripts ("app", "common", ...), and a reload keeps it that way. A page (through this module)
    is the first code of ours that runs then: it switches the old mode off for the process
    (what ``st.navigation`` itself does) and reruns, and the rerun goes through ``app.py`` to the
    page that was asked for.
    """
    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


# Every page imports this module before it draws anything (and a module is imported once per
# process, which is all the switch needs).
run_through_app()

#: session_state key of the sidebar's model choice (the model file's path as a string).
MODEL_KEY = "active_model_path"


@dataclass(frozen=True)
class PageSpec:
    """One page of the app: its script (relative to the app folder), title, icon and menu section."""

    path: str
    title: str
    icon: str
    section: str
    blurb: str


# The whole menu, in order. A page appears once its file exists, so pages still being written
# do not break the app; sections with no page yet are left out.
PAGES = (
    PageSpec("pages/home.py", "Home", ":material/home:", "Start", "What U-Net Studio does."),
    PageSpec("pages/segment.py", "Segment", ":material/biotech:", "Use a model",
             "Find, count and measure cells in your images; fix what the model got wrong."),
    PageSpec("pages/evaluate.py", "Evaluate", ":material/fact_check:", "Use a model",
             "Compare a model's results with hand-drawn labels."),
    PageSpec("pages/datasets.py", "Datasets", ":material/photo_library:", "Train your own",
             "Bring images with labels for training."),
    PageSpec("pages/weight_maps.py", "Weight maps", ":material/grid_on:", "Train your own",
             "See where training puts weight: cell borders and rare classes."),
    PageSpec("pages/train.py", "Train", ":material/model_training:", "Train your own",
             "Teach a U-Net your images."),
    PageSpec("pages/models.py", "Models", ":material/inventory_2:", "Train your own",
             "Shipped and trained models, their cards and files."),
)


def available_pages() -> list[PageSpec]:
    """The pages whose scripts exist, in menu order."""
    return [p for p in PAGES if (APP_ROOT / p.path).is_file()]


# --------------------------------------------------------------------------- model and device


def active_model() -> ModelEntry | None:
    """The model chosen in the sidebar, else the default one, else the first there is.

    An invalid model (``entry.error``) is never chosen while a usable one exists; when none is
    usable the default is returned, so that the page says what is wrong with it.
    """
    models = [m for m in list_models() if m.usable]
    chosen = st.session_state.get(MODEL_KEY)
    for entry in models:
        if str(entry.path) == chosen:
            return entry
    default = default_model()
    if default is not None and default.usable:
        return default
    return models[0] if models else default


@st.cache_resource(show_spinner=False)
def _machine_line() -> str:
    return device_summary()  # probes the GPU driver once per server


def device_line() -> str:
    """Where the active model runs: what its ONNX Runtime session uses (a GPU can be present and
    still unused), or, without a usable model, what this machine offers."""
    entry = active_model()
    if entry is not None and entry.usable:
        try:
            return get_predictor(entry).device_name
        except ModelLoadError:
            pass
    return _machine_line()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _load(path: str, mtime: float, device: str) -> Predictor:
    # mtime is part of the cache key: a model file replaced in place (re-export, new training)
    # is loaded again instead of serving the old weights.
    return load_predictor(path, device)


def get_predictor(entry: ModelEntry, device: str = "auto") -> Predictor:
    """The predictor of ``entry``, loaded once per file version; raises ``ModelLoadError``."""
    return _load(str(entry.path), _mtime(entry.path), device)


def predictor_or_stop(entry: ModelEntry, what_to_do: str) -> Predictor:
    """The predictor of ``entry``; if it will not load, an error saying ``what_to_do`` and stop."""
    try:
        return get_predictor(entry)
    except ModelLoadError as exc:
        st.error(f"The model **{entry.label}** cannot be used: {exc}.  \n{what_to_do}", icon=":material/error:")
        st.stop()


def _mtime(path: Path | None) -> float:
    return path.stat().st_mtime if path is not None and path.exists() else 0.0


@st.cache_data(max_entries=16, show_spinner=False)
def _card(entry: ModelEntry, model_mtime: float, card_mtime: float) -> str:
    # The mtimes key the cache: an edited card or a re-exported model shows its new text. The
    # card's title sits under the page's: its headings go two levels down.
    return read_card(entry, top_heading=3)


def model_card(entry: ModelEntry) -> str:
    """The model card as Markdown (read once per file version: a card from ONNX metadata parses
    the whole model file)."""
    return _card(entry, _mtime(entry.path), _mtime(entry.card_path))


def show_no_model() -> None:
    """Say plainly that there is no model yet and how to get one."""
    st.info(
        "**No model yet.** U-Net Studio needs a trained U-Net to segment images.\n\n"
        "- Export a trained checkpoint into the `models/` folder: "
        "`python -m unet_core export CHECKPOINT.pt --out models/unet-nuclei.onnx`\n"
        "- or train one on your own images (the Train page, once available).\n\n"
        "Models are picked up as soon as they are there: reload this page.",
        icon=":material/info:",
    )


# --------------------------------------------------------------------------- result files


# --------------------------------------------------------------------------- data sets
#
# The Datasets and Weight maps pages pick images the same way: the synthetic generator, a folder
# under the data root, or an uploaded zip. The choice (and the image shown) follows the user from
# page to page through the non-widget keys below; widget keys are per page.

#: session_state: the last :class:`~unet_core.studio.browse.DataSource` chosen on any page.
SOURCE_KEY = "data_source"
#: session_state: the name of the sample shown last.
SAMPLE_KEY = "data_sample"
#: session_state: the extracted upload, ``{"file_id", "name", "folder"}`` or with ``"error"``.
UPLOAD_KEY = "data_upload"
_SESSION_KEY = "upload_session"

SOURCE_LABELS = {"synthetic": "Synthetic (made here)", "folder": "Data folder", "upload": "Zip upload"}
SYNTH_MODES = {"fluorescence": "Fluorescence (bright nuclei)",
               "phase": "Phase contrast (dark cells, bright halos)"}


#: session_state: widget key -> last value, for the widgets made with :func:`kept`.
KEPT_KEY = "kept_widgets"


def _store(key: str) -> None:
    st.session_state[KEPT_KEY][key] = st.session_state[key]


def kept(key: str, default: object, choices: Sequence[object] | None = None) -> dict[str, Any]:
    """Widget arguments (``key``, ``on_change``) that make its value survive a visit to another page.

    Streamlit forgets the value of a widget that a run does not draw, so an option set on one page
    was back at its default after a look at another. The value is copied aside when the user
    changes it and given back (through session_state, so the widget takes no ``value=``) when the
    page is drawn again; a value no longer among ``choices`` (another model's tile sizes) falls
    back to ``default``.
    """
    store = st.session_state.setdefault(KEPT_KEY, {})
    if key not in st.session_state:
        value = store.get(key, default)
        st.session_state[key] = default if choices is not None and value not in choices else value
    return {"key": key, "on_change": _store, "args": (key,)}


#: How the pages say the test-time augmentation choices (``unet_core.config.SWITCH_CHOICES``).
_TTA_WORDS = {"auto": f"Automatic (images up to {TTA_AUTO_PIXELS / 1e6:.0f} megapixel)", "on": "Always",
              "off": "Never"}


def choose_tta(key: str) -> bool | None:
    """Test-time augmentation: automatic (the engine's default), always or never; kept across pages."""
    choice = st.selectbox(
        "Test-time augmentation", list(SWITCH_CHOICES), format_func=_TTA_WORDS.__getitem__,
        **kept(key, "auto", list(SWITCH_CHOICES)),
        help="Average the network's answer over the 8 flips and rotations of each piece (as in the paper's ISBI "
        "entry): more accurate objects (mean AP +0.015 on images of new experiments), about 5 times slower. "
        "Automatic does it for images small enough that it costs seconds.")
    return SWITCH_CHOICES[choice]


def _seed(key: str, value: object) -> None:
    """A widget's starting value, given through session_state (never also as ``value=``)."""
    if key not in st.session_state:
        st.session_state[key] = value


@st.cache_data(ttl=10, show_spinner=False)
def _list_datasets(root: str) -> list[DatasetSummary]:
    return list_datasets(root)


@st.cache_resource(max_entries=8, show_spinner="Opening the data set…")
def open_source_cached(source: DataSource) -> Dataset:
    """The :class:`~unet_core.datasets.Dataset` of a source, opened once per source version."""
    return open_source(source)


@st.cache_data(max_entries=64, show_spinner=False)
def load_sample_cached(source: DataSource, i: int) -> SampleView:
    """Sample ``i`` of a source as a :class:`~unet_core.studio.browse.SampleView`; raises BrowseError."""
    return load_sample(open_source_cached(source), i)


def _synthetic_source(prefix: str, last: DataSource) -> DataSource:
    k = f"{prefix}_synth_"
    _seed(k + "mode", last.mode)
    _seed(k + "n", last.n)
    _seed(k + "seed", last.seed)
    mode_col, n_col, seed_col = st.columns([2, 1, 1])
    mode = mode_col.selectbox("Look", list(SYNTH_MODES), format_func=SYNTH_MODES.__getitem__, key=k + "mode")
    n = n_col.number_input("Images", min_value=1, max_value=64, step=1, key=k + "n")
    seed = seed_col.number_input("Seed", min_value=0, max_value=10**6, step=1, key=k + "seed",
                                 help="Another number draws other cells; the same number, the same images.")
    return DataSource("synthetic", mode=mode, n=int(n), seed=int(seed), size=last.size)


def _folder_source(prefix: str, last: DataSource) -> DataSource | None:
    root = data_root()
    st.caption(f"Data folder: `{root}` (set `{DATA_ENV}` to use another)")
    found = []
    for summary in _list_datasets(str(root)):
        try:
            found.append((resolve_in_root(root, summary.name), summary))
        except OutsideRoot:  # a link pointing out of the data folder is not offered
            continue
    k = f"{prefix}_folder_"
    names = [s.name for _, s in found]
    last_name = Path(last.path).name if last.kind == "folder" else None
    typed_before = last.kind == "folder" and last_name not in names and last.label
    _seed(k + "typed", last.label if typed_before else "")
    if names:
        if st.session_state.get(k + "name") not in names:
            st.session_state[k + "name"] = last_name if last_name in names else names[0]
        labels = {s.name: f"{s.name} ({s.n_samples} images)" for _, s in found}
        name = st.selectbox("Data set", names, format_func=labels.__getitem__, key=k + "name")
    else:
        name = None
        st.info(f"No data set in `{root}` yet. Put a folder there with `images/` and `masks/` inside "
                "(matching file names), or use another source.", icon=":material/info:")
    typed = st.text_input("…or a sub-folder of the data folder", key=k + "typed",
                          placeholder="e.g. ctc/Fluo-N2DH-GOWT1",
                          help="A path relative to the data folder, for data sets in nested folders.")
    chosen = typed.strip() or name
    if not chosen:
        return None
    try:
        folder = resolve_in_root(root, chosen)
    except OutsideRoot:
        st.error(f"`{chosen}` is outside the data folder, so it is not opened. Only folders inside `{root}` "
                 f"can be used: copy the data set there, or set `{DATA_ENV}` to the folder that holds it.",
                 icon=":material/block:")
        return None
    label = folder.relative_to(root.resolve()).as_posix() or root.name
    return DataSource("folder", path=str(folder), label=label, version=folder_version(folder))


def _upload_source(prefix: str) -> DataSource | None:
    upload = st.file_uploader(
        "A zip of your data set", type=["zip"], key=f"{prefix}_zip",
        help="Zip the data set's folder (with images/ and masks/ inside, or another known layout; or images/ "
        "and annotations/ with one QuPath GeoJSON export or Fiji ROI set per image, named after it, e.g. "
        "cells.geojson or cells_RoiSet.zip). It is unpacked on this computer for this session only. Larger "
        "than the upload limit? Copy the folder into the data folder instead.",
    )
    state = st.session_state.get(UPLOAD_KEY)
    if upload is not None and (state is None or state["file_id"] != upload.file_id):
        session = st.session_state.setdefault(_SESSION_KEY, uuid.uuid4().hex)
        state = {"file_id": upload.file_id, "name": upload.name}
        try:
            with st.spinner(f"Unpacking {upload.name}…"):
                state["folder"] = str(extract_upload(upload.getvalue(), session))
        except ZipRejected as exc:
            state["error"] = (f"**{upload.name}** was not opened: {exc}.  \nZip the data set's folder "
                              "again with an ordinary zip tool (no links, nothing outside the folder) and "
                              "upload it.")
        except DatasetError as exc:
            state["error"] = (f"**{upload.name}** holds no data set this program knows: {exc}.  \n"
                              "Put the images in `images/` and their masks in `masks/` (same file names), or "
                              "their QuPath or Fiji outlines in `annotations/`, zip that folder and upload it "
                              "again.")
        except BrowseError as exc:  # the uploads folder itself is not safe to use
            state["error"] = f"**{upload.name}** was not opened: {exc}."
        st.session_state[UPLOAD_KEY] = state
    if state is None:
        st.caption("Drop a zip above; it stays for this session, on every page.")
        return None
    if "error" in state:
        st.error(state["error"], icon=":material/error:")
        return None
    if upload is None:
        st.caption(f"Using **{state['name']}**, uploaded earlier. Drop another zip to replace it.")
    folder = state["folder"]
    return DataSource("upload", path=folder, label=state["name"], version=folder_version(folder))


def choose_dataset(prefix: str) -> tuple[DataSource, Dataset] | None:
    """Where the images come from, as widgets; the chosen source and its opened data set.

    Returns None (after saying why on the page) when nothing usable is chosen. ``prefix`` keeps
    each page's widget keys apart: ``{prefix}_kind``, ``{prefix}_synth_n``, ``{prefix}_zip``, ….
    """
    last = st.session_state.get(SOURCE_KEY) or DataSource()
    _seed(f"{prefix}_kind", last.kind)
    kind = st.radio("Images from", list(SOURCE_LABELS), format_func=SOURCE_LABELS.__getitem__,
                    horizontal=True, key=f"{prefix}_kind")
    if kind == "synthetic":
        source = _synthetic_source(prefix, last)
    elif kind == "folder":
        source = _folder_source(prefix, last)
    else:
        source = _upload_source(prefix)
    if source is None:
        return None
    try:
        ds = open_source_cached(source)
    except DatasetError as exc:
        st.error(f"**{source.title}** is not a data set this program knows: {exc}.  \nPut the images in "
                 "`images/` and their masks in `masks/` (same file names), or choose another folder.",
                 icon=":material/error:")
        return None
    except OSError as exc:  # permissions, a folder removed while open
        st.error(f"**{source.title}** cannot be read ({exc.strerror or exc}). Check that the folder exists "
                 "and that you may read it, then reload the page.", icon=":material/error:")
        return None
    st.session_state[SOURCE_KEY] = source
    return source, ds


def dataset_or_stop(
    chosen: tuple[DataSource, Dataset] | None,
    empty: str,
    on_empty: Callable[[Dataset], None] | None = None,
) -> tuple[DataSource, Dataset]:
    """The chosen source and data set; the page stops when nothing usable was chosen.

    ``empty`` is the error (Markdown) for a data set without one image that has a mask;
    ``{title}`` in it becomes the data set's name. ``on_empty`` may show more below the error.
    """
    if chosen is None:
        st.stop()
    source, ds = chosen
    if len(ds) == 0:
        st.error(empty.format(title=md_escape(source.title)), icon=":material/error:")
        if on_empty is not None:
            on_empty(ds)
        st.stop()
    return source, ds


def md_escape(text: str) -> str:
    """Plain text in Markdown (file names with _ or * must not turn italic)."""
    return "".join("\\" + c if c in "\\`*_{}[]<>()#+!|~$" else c for c in text)


def short_name(name: str, limit: int = 28) -> str:
    """A long sample name shortened in the middle: ``0acd2c223d…b4091b96``."""
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2 - 1):]}"


def choose_sample(ds: Dataset, key: str, label: str = "Image") -> int:
    """A selectbox of the data set's samples (the last one shown on any page first); its index."""
    names = [s.name for s in ds.samples]
    if st.session_state.get(key) not in names:
        wanted = st.session_state.get(SAMPLE_KEY)
        st.session_state[key] = wanted if wanted in names else names[0]
    numbers = {name: i for i, name in enumerate(names)}
    name = st.selectbox(label, names, key=key, format_func=lambda n: f"{numbers[n] + 1}. {short_name(n, 40)}")
    st.session_state[SAMPLE_KEY] = name
    return numbers[name]


# --------------------------------------------------------------------------- metrics in words
#
# The Train and Evaluate pages name the engine's metrics (unet_core.metrics) the same way: a short
# label, whether higher is better, and one sentence for the help tooltip.

METRICS: dict[str, tuple[str, bool, str]] = {
    "dsb_ap": ("Object score (AP)", True,
               ("Data Science Bowl 2018 mean average precision: how many objects are found with the right "
               "outline, averaged over strictness levels (IoU 0.5 to 0.95). 1 = every object exactly right.")),
    "foreground_iou": ("Pixel overlap (IoU)", True,
                       ("Object pixels in both the model's result and the hand-drawn mask, divided by those in "
                       "either. 1 = the same pixels.")),
    "seg": ("SEG", True,
            ("Cell Tracking Challenge measure: for each hand-drawn object, the overlap (IoU) with the model's "
            "object covering most of it; 0 when none covers half of it. 1 = perfect.")),
    "rand_error": ("Rand error", False,
                   ("ISBI 2012 measure of splits and merges: how often two pixels are wrongly put in the same "
                   "object or in different objects. 0 = perfect.")),
    "warping_error": ("Warping error", False,
                      "ISBI 2012 measure of topology mistakes (objects split, merged, holes). 0 = perfect."),
    "pixel_error": ("Pixel error", False, "Fraction of pixels given the wrong class. 0 = perfect."),
    "mean_iou": ("Mean IoU of the classes", True, "Pixel overlap (IoU) of each class, averaged. 1 = perfect."),
}


def metric_label(key: str, arrow: bool = False) -> str:
    """How pages name a metric, e.g. ``Object score (AP)``; with ``arrow``, ``… ↑`` or ``… ↓``."""
    label, higher, _ = METRICS.get(key, (key.replace("_", " "), True, ""))
    return f"{label} {'↑' if higher else '↓'}" if arrow else label


def metric_help(key: str) -> str:
    _, higher, text = METRICS.get(key, (key, True, ""))
    return f"{text} {'Higher' if higher else 'Lower'} is better."
