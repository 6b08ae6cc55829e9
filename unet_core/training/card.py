"""The end of a run: the best checkpoint exported to ``model.onnx`` with its metadata, and the
model card ``model.md`` a biologist reads (data, split, settings, time, hardware, metrics)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..checkpoint import read_checkpoint
from ..config import TrainConfig
from ..metadata import ModelMeta
from ..model import UNet
from .data import TrainData
from .record import make_meta, training_record, versions


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"



def export_run(cfg: TrainConfig, data: TrainData, step: int, elapsed: float,
               best: dict[str, Any] | None, precision: str = "none") -> tuple[Path, Path]:
    """Export the best checkpoint (else the last) to ``model.onnx`` and write the card ``model.md``;
    ``precision``: the autocast the run trained in (``cfg.amp`` resolved on its device)."""
    from ..export import to_onnx

    out = Path(cfg.out)
    source = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
    ckpt = read_checkpoint(source)
    training = training_record(cfg, data, step, elapsed, best)
    training["exported_from"] = source.name
    training["exported_step"] = int(ckpt.get("step", step))
    training["precision"] = precision
    meta = make_meta(cfg, data, training)
    model = UNet.from_config(meta.unet)
    model.load_state_dict(ckpt["model"])
    model.eval()
    onnx_path = to_onnx(model, meta, out / "model.onnx")
    card = out / "model.md"
    card.write_text(model_card(cfg, data, meta, step, elapsed, best, source.name))
    return onnx_path, card


def _object_rule(meta: ModelMeta) -> str:
    if meta.border_class is None:
        return "objects = connected components of class 1"
    return f"objects = connected components of class 1, grown over the border class {meta.border_class}"


def model_card(cfg: TrainConfig, data: TrainData, meta: ModelMeta, step: int, elapsed: float,
               best: dict[str, Any] | None, source: str) -> str:
    """The model card: data, split, settings, steps, time, hardware, metrics, date."""
    v = versions()
    hw = v["gpu"] or f"{v['cpu']} ({v['torch_threads']} torch threads)"
    metrics = (best or {}).get("metrics") or {}
    lines = [
        f"# {meta.name}",
        "",
        (f"U-Net (Ronneberger et al. 2015), width {cfg.width}, depth {cfg.depth}, "
         f"{sum(p.numel() for p in UNet.from_config(meta.unet).parameters()):,} parameters, "
         f"classes {meta.class_names} ({_object_rule(meta)})."),
        "",
        "## Data",
        "",
        (f"- data set: `{meta.training['data']}` ({data.dataset.layout}, {len(data.dataset)} images, masks "
         f"{data.dataset.mask_encoding})"),
        f"- split: {data.rule.to_dict()} -> {len(data.train_indices)} train / {len(data.val_indices)} val images",
    ]
    if data.rule.groups:
        lines.append(f"- held out as whole acquisition groups (never trained on): {', '.join(data.rule.groups)}")
    if cfg.diameter:
        lines.append(f"- every image rescaled so that its median object diameter is {cfg.diameter:g} px "
                     "(the model's canonical diameter; inference rescales the same way)")
    if data.synthetic is not None:
        lines.append(f"- mixed in: {cfg.synth_n} synthetic images ({cfg.synth_mix:.0%} of the tiles)")
    lines += [
        "",
        "## Training",
        "",
        (f"- steps: {step} (model from `{source}`"
         + (f", step {best['step']}" if best else "") + f"), time {duration(elapsed)}"),
        f"- tile: {cfg.geometry.input_size(cfg.tile)} -> {cfg.tile}, batch {cfg.batch}",
        f"- loss: weighted softmax cross-entropy, w0 {cfg.w0}, sigma {cfg.sigma}, class weights {cfg.class_weights}",
        (f"- optimiser: {cfg.optimizer}, lr {cfg.lr:g} ({cfg.schedule}"
         + (f", {cfg.warmup_steps} warm-up steps" if cfg.warmup_steps else "") + ")"
         + (f", momentum {cfg.momentum}" if cfg.optimizer == "sgd" else "")),
        (f"- augmentation: {'elastic + rotation/flip/shift + gray values' if cfg.augment.enabled else 'none'}"
         + (f", polarity inversion p={cfg.invert_prob}" if cfg.invert_prob else "")
         + (f", synthetic cell bodies on p={cfg.cytoplasm_prob} of inverted tiles" if cfg.cytoplasm_prob else "")),
        f"- normalisation: percentiles {cfg.normalisation.low_percentile} / {cfg.normalisation.high_percentile}",
        f"- seed {cfg.seed}" + (f"; fine-tuned from `{cfg.init}`" if cfg.init else ""),
        f"- hardware: {hw}; torch {v['torch']}; "
        + ("fp32" if meta.training.get("precision", "none") == "none" else f"{meta.training['precision']} autocast"),
        f"- date: {meta.training['date']}",
        "",
        "## Validation metrics",
        "",
        ("At the argmax of the class probabilities, overlap-tile inference "
         f"(tile {cfg.val_tile or cfg.tile}), on the {len(data.val_indices)} validation images"
         + (f" (first {cfg.val_max_images})" if cfg.val_max_images else "") + "."),
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {'n/a' if v is None or not math.isfinite(v) else f'{v:.4f}'} |"
                  for k, v in metrics.items()]
    else:
        lines.append("(no validation ran)")
    lines += ["", (f"Reproduce: `python -m unet_core train --data {cfg.data} --out {cfg.out} ...` with the "
                   "settings in `config.json`; the files and split are in `manifest.json`."), ""]
    return "\n".join(lines)
