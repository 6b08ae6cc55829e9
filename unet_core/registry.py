"""Where models live and what they say about themselves: the list the app chooses from.

Two places hold models:

``models/`` (shipped)
    ``<name>.onnx`` with its model card ``<name>.md`` beside it.
``runs/<run>/`` (trained here)
    ``model.onnx`` with its card ``model.md``.

Both folders can be moved with the environment variables ``UNET_STUDIO_MODELS`` and
``UNET_STUDIO_RUNS`` (tests point the app at temporary folders this way). A model without a card
file still gets one: :func:`read_card` writes it from the metadata embedded in the ONNX file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_ENV = "UNET_STUDIO_MODELS"
RUNS_ENV = "UNET_STUDIO_RUNS"
#: the shipped model the app selects first when it exists.
DEFAULT_MODEL_NAME = "unet-nuclei"
RUN_MODEL_FILE = "model.onnx"

Source = Literal["shipped", "run"]


@dataclass(frozen=True)
class ModelEntry:
    """A model the app can use.

    Attributes:
        name: model file stem for shipped models, the run folder's name for trained ones.
        path: the ``.onnx`` file.
        card_path: the model card (Markdown) beside it, if there is one.
        source: ``"shipped"`` (``models/``) or ``"run"`` (trained, ``runs/<run>/``).
    """

    name: str
    path: Path
    card_path: Path | None
    source: Source

    @property
    def label(self) -> str:
        """How the model is named in menus, e.g. ``unet-nuclei (shipped)``."""
        return f"{self.name} ({'shipped' if self.source == 'shipped' else 'trained here'})"


def models_dir() -> Path:
    """The folder of shipped models (``UNET_STUDIO_MODELS`` or ``models/`` of the repository)."""
    return Path(os.environ.get(MODELS_ENV) or REPO_ROOT / "models")


def runs_dir() -> Path:
    """The folder of training runs (``UNET_STUDIO_RUNS`` or ``runs/`` of the repository)."""
    return Path(os.environ.get(RUNS_ENV) or REPO_ROOT / "runs")


def _card(path: Path) -> Path | None:
    card = path.with_suffix(".md")
    return card if card.is_file() else None


def list_models() -> list[ModelEntry]:
    """Shipped models by name, then trained ones, the most recently written first.

    Missing folders simply contribute nothing: a fresh checkout has no ``runs/`` yet.
    """
    shipped_dir, run_root = models_dir(), runs_dir()
    shipped = sorted(shipped_dir.glob("*.onnx")) if shipped_dir.is_dir() else []
    entries = [ModelEntry(p.stem, p, _card(p), "shipped") for p in shipped if p.is_file()]
    if run_root.is_dir():
        trained = [p for p in run_root.glob(f"*/{RUN_MODEL_FILE}") if p.is_file()]
        trained.sort(key=lambda p: (-p.stat().st_mtime, p.parent.name))
        entries += [ModelEntry(p.parent.name, p, _card(p), "run") for p in trained]
    return entries


def default_model() -> ModelEntry | None:
    """``models/unet-nuclei.onnx`` when shipped, else the first shipped model, else None."""
    shipped = [e for e in list_models() if e.source == "shipped"]
    preferred = [e for e in shipped if e.name == DEFAULT_MODEL_NAME]
    return (preferred or shipped or [None])[0]


def read_card(entry: ModelEntry) -> str:
    """The model card as Markdown: the card file, or one written from the embedded metadata.

    Never raises for a broken model: the card then says what is wrong, so the page that shows
    it can still be drawn.
    """
    if entry.card_path is not None:
        try:
            return entry.card_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return f"The model card {entry.card_path.name} cannot be read ({exc})."
    from .export import read_metadata

    try:
        meta = read_metadata(entry.path)
    except Exception as exc:  # noqa: BLE001 -- onnx raises several unrelated types for a damaged file
        return f"`{entry.path.name}` carries no readable U-Net Studio metadata ({exc})."
    net = meta.unet
    lines = [
        (f"**{meta.name}**: a U-Net with {net.depth} pooling steps, {net.width} features in the "
         f"first layer, {net.padding} convolutions; {net.in_channels} input channel(s)."),
        "",
        "Classes: " + ", ".join(
            f"{k} = {name}" + (" (objects)" if k in meta.foreground_classes else "")
            for k, name in enumerate(meta.class_names)
        ),
    ]
    if meta.training:
        lines += ["", "Training:"]
        lines += [f"- {key}: {value}" for key, value in sorted(meta.training.items())]
    else:
        lines += ["", "No training record is stored in this model (no model card file either)."]
    return "\n".join(lines)
