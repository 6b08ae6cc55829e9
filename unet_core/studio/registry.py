"""Where models live and what they say about themselves: the list the app chooses from.

Two places hold models:

``models/`` (shipped)
    ``<name>.onnx`` with its model card ``<name>.md`` beside it.
``runs/<run>/`` (trained here)
    ``model.onnx`` with its card ``model.md``, and ``model-int8.onnx`` when it was quantized
    (``python -m unet_core quantize runs/<run>/model.onnx``).

An int8 model (:mod:`unet_core.quantize`) is listed right after its fp32 parent, its label saying
so: ``unet-nuclei-int8 (shipped, int8 (calibrated on dsb2018))``.

Both folders (:func:`unet_core.paths.models_dir`, :func:`unet_core.paths.runs_dir`) can be moved
with the environment variables ``UNET_STUDIO_MODELS`` and ``UNET_STUDIO_RUNS`` (tests point the app
at temporary folders this way). A model without a card file still gets one: :func:`read_card` writes it from the metadata embedded in the ONNX file.

Every model is checked when listed (:func:`unet_core.runtime.inspect_onnx`: metadata in range,
graph matching it): an invalid one is still listed, with the reason in ``error``, so the app can
say what is wrong with it, but it is never chosen as the active model.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..paths import models_dir, runs_dir

#: the shipped model the app selects first when it exists.
DEFAULT_MODEL_NAME = "unet-nuclei"
RUN_MODEL_FILE = "model.onnx"
#: the int8 copy of a run's model, as ``python -m unet_core quantize`` names it by default.
RUN_INT8_FILE = "model-int8.onnx"

Source = Literal["shipped", "run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """A model the app can use.

    Attributes:
        name: model file stem for shipped models, the run folder's name for trained ones.
        path: the ``.onnx`` file.
        card_path: the model card (Markdown) beside it, if there is one.
        source: ``"shipped"`` (``models/``) or ``"run"`` (trained, ``runs/<run>/``).
        error: why the model file cannot be used (damaged, metadata out of range, graph not
            matching its metadata), else None. An entry with an error is never made active.
        note: what sets the model apart in lists, e.g. ``int8 (calibrated on dsb2018)``, or None.
        parent: for an int8 model, the file name of the fp32 model it was made from, else None.
    """

    name: str
    path: Path
    card_path: Path | None
    source: Source
    error: str | None = None
    note: str | None = None
    parent: str | None = None

    @property
    def usable(self) -> bool:
        """True when the file passed the checks on load (it may still fail to start a session)."""
        return self.error is None

    @property
    def label(self) -> str:
        """How the model is named in menus, e.g. ``unet-nuclei (shipped)``."""
        origin = "shipped" if self.source == "shipped" else "trained here"
        note = f", {self.note}" if self.note else ""
        return f"{self.name} ({origin}{note}{', invalid' if self.error else ''})"


def _card(path: Path) -> Path | None:
    card = path.with_suffix(".md")
    return card if card.is_file() else None


def model_problem(path: Path) -> str | None:
    """Why the model file at ``path`` cannot be used, or None; checked once per file version."""
    return _facts(path)[0]


def _facts(path: Path) -> tuple[str | None, str | None, str | None]:
    """(problem, note, parent) of the model file at ``path`` (see :class:`ModelEntry`)."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", None, None
    return _checked(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _checked(path: str, mtime_ns: int, size: int) -> tuple[str | None, str | None, str | None]:
    # mtime and size are part of the key: a model exported again in place is checked again.
    from ..quantize import describe, plain_name
    from ..runtime import ModelLoadError, inspect_onnx

    try:
        meta = inspect_onnx(path)
    except ModelLoadError as exc:
        text = str(exc)
        return (text[len(path) + 2:] if text.startswith(f"{path}: ") else text), None, None
    except Exception as exc:  # a listing must never fail because of one file
        log.debug("checking %s failed", path, exc_info=True)
        return f"cannot be checked ({type(exc).__name__}: {exc})", None, None
    record = meta.quantization or {}
    parent = record.get("parent")
    return None, describe(record), plain_name(parent) if parent else None


def _entry(name: str, path: Path, source: Source) -> ModelEntry:
    problem, note, parent = _facts(path)
    return ModelEntry(name, path, _card(path), source, problem, note, parent)


def _next_to_parents(entries: list[ModelEntry]) -> list[ModelEntry]:
    """``entries`` with every int8 model moved right after its parent (same folder, file named in
    its quantization record); int8 models whose parent is not listed keep their place."""
    by_file = {(e.path.parent, e.path.name): e for e in entries}
    children: dict[Path, list[ModelEntry]] = {}
    for e in entries:
        parent = by_file.get((e.path.parent, e.parent)) if e.parent else None
        if parent is not None and parent is not e:
            children.setdefault(parent.path, []).append(e)
    moved = {id(c) for group in children.values() for c in group}
    ordered: list[ModelEntry] = []
    for e in entries:
        if id(e) in moved:
            continue
        ordered.append(e)
        ordered += children.get(e.path, [])
    return ordered


def list_models() -> list[ModelEntry]:
    """Shipped models by name, then trained ones, the most recently written first.

    Missing folders simply contribute nothing: a fresh checkout has no ``runs/`` yet. Invalid
    model files are listed too, with ``error`` saying why (see :class:`ModelEntry`).
    """
    shipped_dir, run_root = models_dir(), runs_dir()
    shipped = sorted(shipped_dir.glob("*.onnx")) if shipped_dir.is_dir() else []
    entries = [_entry(p.stem, p, "shipped") for p in shipped if p.is_file()]
    if run_root.is_dir():
        trained = [p for p in run_root.glob(f"*/{RUN_MODEL_FILE}") if p.is_file()]
        trained.sort(key=lambda p: (-p.stat().st_mtime, p.parent.name))
        for p in trained:
            entries.append(_entry(p.parent.name, p, "run"))
            int8 = p.with_name(RUN_INT8_FILE)
            if int8.is_file():
                entries.append(_entry(f"{p.parent.name}-int8", int8, "run"))
    return _next_to_parents(entries)


def default_model() -> ModelEntry | None:
    """``models/unet-nuclei.onnx`` when shipped, else the first shipped model, else None.

    Usable models come first; when every shipped model is invalid the preferred one is returned
    anyway, so that the app can say what is wrong with it.
    """
    shipped = [e for e in list_models() if e.source == "shipped"]
    for candidates in ([e for e in shipped if e.usable], shipped):
        preferred = [e for e in candidates if e.name == DEFAULT_MODEL_NAME]
        if preferred or candidates:
            return (preferred or candidates)[0]
    return None


def read_card(entry: ModelEntry, top_heading: int = 1) -> str:
    """The model card as Markdown: the card file, or one written from the embedded metadata.

    Never raises for a broken model: the card then says what is wrong, so the page that shows
    it can still be drawn.

    Args:
        entry: the model.
        top_heading: the level its title gets (1 = as written; 3 for a card shown inside a page,
            whose own title is the page's): every heading moves down by as many levels.
    """
    if entry.card_path is not None:
        try:
            text = entry.card_path.read_text(encoding="utf-8")
            shift = "#" * max(0, top_heading - 1)
            return re.sub(r"^(#{1,6}) ", lambda m: (shift + m.group(1))[:6] + " ", text, flags=re.MULTILINE)
        except (OSError, UnicodeDecodeError) as exc:
            return f"The model card {entry.card_path.name} cannot be read ({exc})."
    from ..metadata import read_metadata

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
    if meta.quantization:
        q = meta.quantization
        if q.get("format") == "fp16":
            lines += ["", f"An fp16 copy of `{q.get('parent', '?')}` for CUDA GPUs, made on {q.get('date', '?')}."]
        else:
            lines += ["", (f"An int8 copy ({q.get('format', 'int8')}) of `{q.get('parent', '?')}`, calibrated "
                           f"({q.get('calibration', '?')}) on {q.get('tiles', '?')} tiles of {q.get('data', '?')} "
                           f"on {q.get('date', '?')}.")]
    if meta.training:
        lines += ["", "Training:"]
        lines += [f"- {key}: {value}" for key, value in sorted(meta.training.items())]
    else:
        lines += ["", "No training record is stored in this model (no model card file either)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- which images a model saw


def split_for(training: dict[str, Any], source: Any, n_items: int, default_rule: Any) -> tuple[Any, bool]:
    """The split rule to evaluate a model with on a data set, and whether it is the model's own.

    When ``source`` (a :class:`~unet_core.studio.browse.DataSource`) is the data the model was trained on
    (the same folder, or the same synthetic images: count, seed, look and size), the model's split
    rule from its metadata (``training["split_rule"]``) says which images it never saw; otherwise
    the data set's own rule ``default_rule`` is used (and every image is new to the model anyway).
    """
    from ..datasets import SplitRule

    rule_dict = training.get("split_rule") if isinstance(training, dict) else None
    if not rule_dict or not trained_on(training, source):
        return default_rule, False
    try:
        return SplitRule.from_dict(rule_dict), True
    except (KeyError, TypeError, ValueError):
        return default_rule, False


def trained_on(training: dict[str, Any], source: Any) -> bool:
    """Whether a model's training record names the data of ``source``."""
    data = training.get("data") if isinstance(training, dict) else None
    if not data:
        return False
    if source.kind == "synthetic":
        if data != "synthetic":
            return False
        cfg = training.get("config") or {}
        synth = cfg.get("synth") or {}
        return (cfg.get("synth_n") == source.n and cfg.get("synth_seed") == source.seed
                and synth.get("mode", "fluorescence") == source.mode
                and synth.get("height", 512) == source.size and synth.get("width", 512) == source.size)
    if data == "synthetic" or not source.path:
        return False
    try:
        return Path(data).resolve() == Path(source.path).resolve()
    except OSError:
        return False
