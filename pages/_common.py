"""What every page shares: the page table, the active model and its cached predictor.

Not a page itself (the leading underscore says so); ``app.py`` and the pages import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from unet_core.registry import ModelEntry, default_model, list_models, read_card
from unet_core.runtime import Predictor, device_summary, load_predictor

APP_ROOT = Path(__file__).resolve().parent.parent

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
             "Find, count and measure cells in your images."),
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
    """The model chosen in the sidebar, else the default one, else the first there is."""
    models = list_models()
    chosen = st.session_state.get(MODEL_KEY)
    for entry in models:
        if str(entry.path) == chosen:
            return entry
    return default_model() or (models[0] if models else None)


@st.cache_resource(show_spinner=False)
def device_line() -> str:
    """Where models run on this machine (probing the GPU once per server)."""
    return device_summary()


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _load(path: str, mtime: float, device: str) -> Predictor:
    # mtime is part of the cache key: a model file replaced in place (re-export, new training)
    # is loaded again instead of serving the old weights.
    return load_predictor(path, device)


def get_predictor(entry: ModelEntry, device: str = "auto") -> Predictor:
    """The predictor of ``entry``, loaded once per file version; raises ``ModelLoadError``."""
    return _load(str(entry.path), _mtime(entry.path), device)


def _mtime(path: Path | None) -> float:
    return path.stat().st_mtime if path is not None and path.exists() else 0.0


@st.cache_data(max_entries=16, show_spinner=False)
def _card(entry: ModelEntry, model_mtime: float, card_mtime: float) -> str:
    # The mtimes key the cache: an edited card or a re-exported model shows its new text.
    return read_card(entry)


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


